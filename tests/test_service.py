"""`mlx-bridge start/status/stop/restart` as real background processes in a temporary state dir."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import requests

from bridge.service.process import ServicePaths, pid_alive

from .service_util import clean_env, free_port, mlx_bridge, port_holder, started


def test_start_status_request_stop(tmp_path, mappings_file):
    home, port = tmp_path / "home", free_port()
    env = clean_env(home)
    paths = ServicePaths(home)
    dead_upstream = f"http://127.0.0.1:{free_port()}"
    with started(home, mappings_file, port, "--upstream", dead_upstream) as url:
        pid = int(paths.pid_file.read_text())
        assert pid_alive(pid)
        state = json.loads(paths.state_file.read_text())
        assert state["pid"] == pid and state["url"] == url
        assert "--log-file" in state["argv"] and str(paths.log_file) in state["argv"]

        status = mlx_bridge("status", env=env)
        assert status.returncode == 0, status.stdout
        for expected in (f"pid:      {pid}", f"address:  {url}", "uptime:",
                         "health:   ok (engine running", "models:   none loaded",
                         f"upstream: {dead_upstream} (unreachable)", str(paths.log_file)):
            assert expected in status.stdout

        reply = requests.post(url + "/api/generate",
                              json={"model": "tiny", "prompt": "hi", "stream": False,
                                    "options": {"num_predict": 3}}, timeout=60)
        assert reply.status_code == 200 and reply.json()["done"] is True
        assert "models:   tiny:latest" in mlx_bridge("status", env=env).stdout

        again = mlx_bridge("start", "--mappings", str(mappings_file), "--port", str(port), env=env)
        assert again.returncode == 0 and f"already running (pid {pid})" in again.stdout

        stop = mlx_bridge("stop", env=env)
        assert stop.returncode == 0 and f"mlx-bridge stopped (pid {pid})" in stop.stdout
        assert not pid_alive(pid)
        assert not paths.pid_file.exists() and not paths.state_file.exists()
        try:
            requests.get(url + "/health", timeout=2)
            raise AssertionError("the server still answers after stop")
        except requests.ConnectionError:
            pass

    after = mlx_bridge("status", env=env)
    assert after.returncode == 3 and "mlx-bridge is not running" in after.stdout
    second_stop = mlx_bridge("stop", env=env)
    assert second_stop.returncode == 0 and "not running" in second_stop.stdout


def test_status_json(tmp_path, mappings_file):
    home = tmp_path / "home"
    env = clean_env(home)
    dead_upstream = f"http://127.0.0.1:{free_port()}"
    with started(home, mappings_file, free_port(), "--upstream", dead_upstream) as url:
        info = json.loads(mlx_bridge("status", "--json", env=env).stdout)
        assert info["running"] and info["healthy"] and info["managed"] and info["url"] == url
        assert info["engine"]["state"] == "running" and info["upstream_reachable"] is False
    info = json.loads(mlx_bridge("status", "--json", env=env).stdout)
    assert info == {"running": False, "healthy": False, "stale_pid": None}


def test_stale_pid_file_is_detected_and_cleaned(tmp_path, mappings_file):
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    paths = ServicePaths(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.pid_file.write_text(f"{dead.pid}\n")
    status = mlx_bridge("status", env=env)
    assert status.returncode == 3
    assert f"removed a stale PID file (pid {dead.pid} is not running)" in status.stdout
    assert not paths.pid_file.exists()

    # a live process that is not a bridge (a recycled PID) is stale too, and is left alone
    other = subprocess.Popen(["sleep", "30"])
    try:
        paths.pid_file.write_text(f"{other.pid}\n")
        stop = mlx_bridge("stop", env=env)
        assert stop.returncode == 0 and f"stale PID file (pid {other.pid}" in stop.stdout
        assert other.poll() is None
        assert not paths.pid_file.exists()
    finally:
        other.kill()
        other.wait()

    paths.pid_file.write_text("garbage\n")
    with started(home, mappings_file, free_port()):
        assert int(paths.pid_file.read_text()) > 0


def test_start_refuses_a_taken_port_and_names_the_holder(tmp_path, mappings_file):
    home, port = tmp_path / "home", free_port()
    with port_holder(port) as holder:
        result = mlx_bridge("start", "--mappings", str(mappings_file), "--port", str(port),
                            env=clean_env(home))
    assert result.returncode == 1
    assert f"port {port} is already in use by pid {holder.pid}" in result.stderr
    assert "python" in result.stderr
    assert not ServicePaths(home).pid_file.exists()


def test_start_names_a_bridge_started_elsewhere(tmp_path, server, mappings_file):
    port = server.rsplit(":", 1)[1]
    result = mlx_bridge("start", "--mappings", str(mappings_file), "--port", port,
                        env=clean_env(tmp_path / "home"))
    assert result.returncode == 1
    assert f"port {port} is already in use by mlx-bridge pid" in result.stderr
    assert "not started from this state dir" in result.stderr


def test_status_reports_a_server_not_started_here(tmp_path, server):
    status = mlx_bridge("status", "--host", server, env=clean_env(tmp_path / "home"))
    assert status.returncode == 0, status.stdout
    assert "not started by `mlx-bridge start`" in status.stdout
    assert f"address:  {server}" in status.stdout and "health:   ok" in status.stdout


def test_start_reports_a_server_that_dies(tmp_path, mappings_file):
    """A bind that gunicorn cannot do: `start` fails, shows the log, leaves no PID file."""
    home = tmp_path / "home"
    result = mlx_bridge("start", "--mappings", str(mappings_file), "--host", "192.0.2.1:9",
                        "--wait", "60", env=clean_env(home))
    assert result.returncode == 1
    assert "the server exited with status" in result.stderr
    assert "192.0.2.1" in result.stderr  # gunicorn's bind error, from the log tail
    assert not ServicePaths(home).pid_file.exists()


def test_restart_keeps_the_previous_settings(tmp_path, mappings_file):
    home, port = tmp_path / "home", free_port()
    env = clean_env(home)
    paths = ServicePaths(home)
    with started(home, mappings_file, port, "--grace", "7") as url:
        first = int(paths.pid_file.read_text())
        result = mlx_bridge("restart", env=env)
        assert result.returncode == 0, result.stderr
        second = int(paths.pid_file.read_text())
        assert second != first and not pid_alive(first)
        state = json.loads(paths.state_file.read_text())
        assert state["grace"] == 7 and state["url"] == url
        assert requests.get(url + "/api/tags", timeout=10).json()["models"][0]["name"]


def test_the_mapping_file_is_passed_only_when_chosen(tmp_path, monkeypatch, mappings_file):
    """So `start` without --mappings imports the demo model on first start, as `serve` does."""
    from bridge.cli.service import argv_for
    from bridge.config import load_config

    monkeypatch.delenv("MLX_BRIDGE_MAPPINGS", raising=False)
    config = load_config({}, home=tmp_path)
    assert "--mappings" not in argv_for(config, 30, {})
    chosen = load_config({}, home=tmp_path, mappings_path=mappings_file)
    argv = argv_for(chosen, 30, {"mappings": str(mappings_file), "demo": False})
    assert (argv[argv.index("--mappings") + 1] == str(mappings_file.resolve())
            and "--no-demo" in argv)
    monkeypatch.setenv("MLX_BRIDGE_MAPPINGS", str(mappings_file))
    assert "--mappings" in argv_for(chosen, 30, {})


def test_stop_never_signals_a_recycled_pid_that_only_looks_like_a_bridge(tmp_path):
    """The PID file names a live process on the recorded port whose command line mentions
    `bridge serve` (another state dir's, or any lookalike): not provably ours, so left alone."""
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    paths = ServicePaths(home)
    port = free_port()
    code = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('ready', flush=True); time.sleep(60)")
    lookalike = subprocess.Popen([sys.executable, "-c", code, "-m", "bridge", "serve",
                                  "--home", str(tmp_path / "elsewhere")],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert lookalike.stdout is not None and lookalike.stdout.readline().strip() == "ready"
        paths.pid_file.write_text(f"{lookalike.pid}\n")
        paths.state_file.write_text(json.dumps({
            "pid": lookalike.pid, "url": f"http://127.0.0.1:{port}", "bind": f"127.0.0.1:{port}",
            "started_at": time.time(), "log_file": str(paths.log_file), "grace": 1.0,
            "argv": [sys.executable, "-m", "bridge", "serve", "--home", str(home)]}))
        stop = mlx_bridge("stop", "--timeout", "2", env=env)
        assert stop.returncode == 0, stop.stderr
        assert f"removed a stale PID file (pid {lookalike.pid}" in stop.stdout
        assert "mlx-bridge is not running" in stop.stdout
        time.sleep(0.5)
        assert lookalike.poll() is None, "stop killed a process that is not this bridge"
        assert not paths.pid_file.exists()
    finally:
        lookalike.kill()
        lookalike.wait()
