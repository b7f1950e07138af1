"""Clients that hang up mid-stream, again and again, against a real server process: no work is
left running, the server answers promptly afterwards, and its memory stays flat.

The tight memory measurement (steady state over many minutes) is scripts/soak.py's job; here
the bound is loose, to catch a leak per disconnect (see docs/reliability.md for the figures).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from datetime import datetime

import pytest
import requests

from .conftest import start_server, stop_server, write_mappings
from .fault_util import rss_kib, worker_pid

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the worker's RSS from /proc")

DISCONNECTS = 30
LONG = {"temperature": 0, "num_predict": 5000, "num_ctx": 8192}
BODIES = {
    "/api/generate": {"model": "tiny", "prompt": "The quick brown fox", "raw": True,
                      "options": LONG},
    "/api/chat": {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story"}],
                  "options": LONG},
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
                             "max_tokens": 5000, "temperature": 0, "stream": True},
    "/v1/messages": {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
                     "max_tokens": 5000, "temperature": 0, "stream": True},
    "/v1/responses": {"model": "tiny", "input": "Hello", "max_output_tokens": 5000,
                      "temperature": 0, "stream": True},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory, long_model_dir):
    root = tmp_path_factory.mktemp("disconnects")
    # 128k context: num_ctx 8192 is not clamped, so 5000 tokens really are seconds of work
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(long_model_dir)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    yield url, worker_pid(proc.pid)
    stop_server(proc)


def hang_up(url: str, path: str, after_lines: int = 3) -> None:
    """Start a long stream, read a few lines, close the connection."""
    with requests.post(url + path, json=BODIES[path], stream=True, timeout=60) as resp:
        assert resp.status_code == 200, resp.text
        lines = (line for line in resp.iter_lines() if line)  # SSE puts blank lines between events
        for _ in range(after_lines):
            assert not re.search(rb'"error":\s*[{"]|event: error', next(lines))
    # leaving the block closes the socket: the server sees the client gone on its next write


def metric(url: str, name: str, **labels: str) -> float:
    """One sample from /metrics (0 when the series does not exist yet)."""
    text = requests.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def settled(url: str, timeout: float = 15) -> dict:
    """/health once the engine has nothing running or queued (or the last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        engine = requests.get(url + "/health", timeout=10).json()["engine"]
        if (engine["active"], engine["queued"]) == (0, 0) or time.monotonic() > deadline:
            return engine
        time.sleep(0.1)


def test_repeated_mid_stream_disconnects_leave_nothing_running(served):
    url, worker = served
    for path in BODIES:  # warm-up: load the model, touch every code path once
        hang_up(url, path)
    # greedy: sampled, the tiny model ends "hi" early about once in 150 (eval_count 8 below)
    short = {"model": "tiny", "prompt": "hi", "stream": False,
             "options": {"num_predict": 8, "temperature": 0}}
    assert requests.post(url + "/api/generate", json=short, timeout=60).status_code == 200
    settled(url)
    rss_before = rss_kib(worker)
    canceled_before = metric(url, "mlx_bridge_requests_total", status="canceled")
    errors_before = metric(url, "mlx_bridge_errors_total")

    paths = list(BODIES)
    for i in range(DISCONNECTS):
        hang_up(url, paths[i % len(paths)])

    # Each stream asked for 5000 tokens (seconds of work): only canceled jobs settle this soon.
    engine = settled(url, timeout=5)
    assert (engine["active"], engine["queued"], engine["state"]) == (0, 0, "running")
    assert metric(url, "mlx_bridge_requests_total",
                  status="canceled") - canceled_before == DISCONNECTS
    # a hang-up is not a backend error
    assert metric(url, "mlx_bridge_errors_total") == errors_before
    ps = requests.get(url + "/api/ps", timeout=10).json()["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"] and ps[0]["size"] > 0
    assert (datetime.fromisoformat(ps[0]["expires_at"].replace("Z", "+00:00")).timestamp()
            > time.time())

    started = time.monotonic()
    reply = requests.post(url + "/api/generate", json=short, timeout=60)
    assert reply.status_code == 200 and reply.json()["eval_count"] == 8
    assert time.monotonic() - started < 10, "a short request after the hang-ups must not queue"

    rss_after = rss_kib(worker)
    growth = (rss_after - rss_before) / rss_before
    print(f"worker RSS {rss_before} KiB -> {rss_after} KiB ({growth:+.1%}) over {DISCONNECTS} "
          "disconnects")
    assert growth < 0.30, f"RSS grew {growth:.0%} over {DISCONNECTS} disconnects"


def hang_up_early(url: str, path: str) -> None:
    """Send a stream request on a bare socket and close it after its first 9 lines of bytes
    (headers and the first events: before most text was written)."""
    body = json.dumps(BODIES[path]).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while received.count(b"\n") < 9 and (chunk := sock.recv(4096)):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:300]


@pytest.mark.parametrize("path", list(BODIES))
def test_sixteen_streams_abandoned_at_once_are_all_canceled(served, path):
    """Hung up together after a few events, every layer's jobs stop within moments (the
    server closing the response ends the job; /v1/messages and /v1/responses streams once ran
    to their limit when the writers' generators were not freed at once)."""
    url, _ = served
    settled(url)
    canceled_before = metric(url, "mlx_bridge_requests_total", status="canceled")
    threads = [threading.Thread(target=hang_up_early, args=(url, path)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine = settled(url, timeout=3)  # 16 × 5000 tokens would be minutes of work
    assert (engine["active"], engine["queued"]) == (0, 0), engine
    assert metric(url, "mlx_bridge_requests_total", status="canceled") - canceled_before == 16
