"""`mlx-bridge stop` while a stream runs: it completes within the grace period, or ends cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from bridge.service.process import ServicePaths, pid_alive

from .conftest import write_mappings
from .service_util import clean_env, free_port, started

# Greedy decoding of the tiny model does not meet its end token for thousands of tokens.
LONG = {"temperature": 0, "num_ctx": 60000}


@pytest.fixture(scope="module")
def long_mappings(tmp_path_factory, long_model_dir):
    """`tiny` with a 128k context: num_ctx 60000 is not clamped to 2048 tokens."""
    root = tmp_path_factory.mktemp("shutdown")
    return write_mappings(root / "m.yaml", {"tiny": {"mlx": str(long_model_dir)}})


def _stream(url: str, num_predict: int) -> tuple[requests.Response, object]:
    body = {"model": "tiny", "prompt": "The quick brown fox", "raw": True,
            "options": {**LONG, "num_predict": num_predict}}
    response = requests.post(url + "/api/generate", json=body, stream=True, timeout=120)
    lines = response.iter_lines()
    first = json.loads(next(lines))
    assert first["done"] is False and "error" not in first
    return response, lines


def _stop(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bridge", "stop"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _sigterm_sent(pid: int, url: str, timeout: float = 15) -> None:
    """Wait until the server refuses new connections: the stop has begun."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/api/version", timeout=1)
        except requests.ConnectionError:
            return
        time.sleep(0.05)
    raise AssertionError("the server kept accepting connections after stop")


def test_stop_lets_a_running_stream_finish(tmp_path, long_mappings):
    home = tmp_path / "home"
    env = clean_env(home)
    with started(home, long_mappings, free_port()) as url:
        pid = int(ServicePaths(home).pid_file.read_text())
        response, lines = _stream(url, 1200)
        stopper = _stop(env)
        _sigterm_sent(pid, url)  # new connections are refused at once, not queued
        assert pid_alive(pid)  # ... while the stream keeps going
        rest = [json.loads(line) for line in lines if line]
        final = rest[-1]
        assert final["done"] is True and final["done_reason"] == "length"
        assert final["eval_count"] == 1200
        assert not any("error" in line for line in rest)
        out, _ = stopper.communicate(timeout=60)
        assert stopper.returncode == 0 and f"mlx-bridge stopped (pid {pid})" in out
        assert not pid_alive(pid)


def test_stop_after_the_grace_period_ends_the_stream_with_an_error_line(tmp_path, long_mappings):
    home = tmp_path / "home"
    env = clean_env(home)
    with started(home, long_mappings, free_port(), "--grace", "1") as url:
        pid = int(ServicePaths(home).pid_file.read_text())
        response, lines = _stream(url, 50000)
        began = time.monotonic()
        stopper = _stop(env)
        rest = [json.loads(line) for line in lines if line]  # no broken chunked encoding
        assert rest[-1] == {"error": "server is shutting down"}
        assert not any(line.get("done") for line in rest)
        out, _ = stopper.communicate(timeout=60)
        assert stopper.returncode == 0 and f"mlx-bridge stopped (pid {pid})" in out  # not killed
        assert time.monotonic() - began < 20
        log = ServicePaths(home).log_file.read_text()
        assert "grace period over, ending in-flight requests" in log
