"""Helpers for the service and CLI tests: run `mlx-bridge` as a real process in a clean
environment."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from bridge.service.process import ServicePaths, pid_alive

# Re-exported for the service tests that import them from here.
from .helpers import free_port, wait_until

__all__ = ["clean_env", "free_port", "kill_leftover", "mlx_bridge", "port_holder", "started",
           "wait_until"]

# Variables that would point a test's commands at the user's real server or state.
_SCRUB = ("MLX_BRIDGE_HOST", "OLLAMA_HOST", "MLX_BRIDGE_HOME", "MLX_BRIDGE_MAPPINGS",
          "MLX_BRIDGE_UPSTREAM", "MLX_BRIDGE_ADMIN_TOKEN", "NO_COLOR")


def clean_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """os.environ without the bridge's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["HF_HUB_OFFLINE"] = "1"
    # As tests/helpers.py: no warm start (its log lines would land mid-test; it has its own tests)
    env["MLX_BRIDGE_WARM_START"] = "off"
    if home is not None:
        env["MLX_BRIDGE_HOME"] = str(home)
    env.update(extra)
    return env


def mlx_bridge(*args: str, env: dict[str, str], timeout: float = 180,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m bridge ARGS` and capture its output."""
    # no input: stdin is /dev/null, never a pipe the runner keeps open (`run` reads a piped stdin)
    stdin = subprocess.DEVNULL if input is None else None
    return subprocess.run([sys.executable, "-m", "bridge", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, input=input, stdin=stdin)


@contextlib.contextmanager
def started(home: Path, mappings: Path, port: int, *args: str,
            env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlx-bridge start` on `port`; always stopped (or killed) afterwards. Yields the URL."""
    env = env or clean_env(home)
    result = mlx_bridge("start", "--mappings", str(mappings), "--port", str(port), *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_leftover(home, env)


def kill_leftover(home: Path, env: dict[str, str]) -> None:
    """Stop the background server of `home`, by SIGKILL if `stop` cannot."""
    paths = ServicePaths(home)
    try:
        pid = int(paths.pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        mlx_bridge("stop", "--timeout", "20", env=env, timeout=40)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def port_holder(port: int, host: str = "127.0.0.1") -> Iterator[subprocess.Popen[str]]:
    """A foreign process (plain python) listening on host:port."""
    family = "AF_INET6" if ":" in host else "AF_INET"
    code = (f"import socket, time; s = socket.socket(socket.{family}); s.bind(({host!r}, {port})); "
            "s.listen(); print('ready', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()
