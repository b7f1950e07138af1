"""Attacks from a remote engine: an OpenAI-protocol endpoint that trickles, streams forever, sends
one endless line or an endless JSON body, invalid SSE, HTML, 500s, or closes mid-stream.

A real bridge process routes one model per behaviour (admin rows, `timeout_seconds: 2`) to a
hostile raw-socket server (tests/hostile_remote.py). Each attack must end with a clear error in
Ollama's shape (502 / 504, or a final `{"error": ...}` line on a stream) within a few timeouts,
the bridge's memory must stay bounded (what it buffers from a remote is capped), and
`/api/version` and a short chat on the local tiny model answer beside it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from .helpers import free_port, start_server, stop_server, write_mappings
from .hostile_remote import MODES, HostileRemote
from .hostile_util import beside, keep_reading, tree_rss

TIMEOUT = 2  # the rows' timeout_seconds
TOKEN = "hostile-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANSWER_WITHIN = 4 * TIMEOUT + 4  # a clear answer well before a client would give up
RSS_GROWTH = 200 << 20  # the bridge's memory beside one attack
THREADS = 16  # the worker's threads: 8 of them may wait on remotes (8 are kept for the rest)
LONG = 6  # the timeout of the row the flood uses


@dataclass
class Srv:
    url: str
    pid: int


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir) -> Iterator[Srv]:
    root = tmp_path_factory.mktemp("hostile-remote")
    remote = HostileRemote()
    mappings = write_mappings(root / "map.yaml", {"tiny": {"backend": "mlx",
                                                           "mlx": str(tiny_model_dir)}},
                              upstream=f"http://127.0.0.1:{free_port()}")
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home")],
                             env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN,
                                  "MLX_BRIDGE_THREADS": str(THREADS)})
    keep_reading(proc, root / "server.log")
    try:
        for mode in MODES:  # admin rows: the only place a remote's timeout is set
            resp = requests.post(url + "/api/llm-backends", timeout=10, headers=AUTH, json={
                "model_name": f"h-{mode}", "backend_type": "mlx", "endpoint_url": remote.url,
                "protocol": "openai", "remote_model": mode, "timeout_seconds": TIMEOUT})
            assert resp.status_code == 201, resp.text
        resp = requests.post(url + "/api/llm-backends", timeout=10, headers=AUTH, json={
            "model_name": "h-silent-long", "backend_type": "mlx", "endpoint_url": remote.url,
            "protocol": "openai", "remote_model": "silent", "timeout_seconds": LONG})
        assert resp.status_code == 201, resp.text
        requests.post(url + "/api/chat", timeout=60, json={"model": "tiny", "messages": [],
                                                             "stream": False})  # loaded
        yield Srv(url, proc.pid)
    finally:
        stop_server(proc)
        remote.close()


def ask(srv: Srv, mode: str, stream: bool) -> tuple[int, list[dict]]:
    """A chat on the hostile model; (status, the JSON objects of the answer)."""
    resp = requests.post(srv.url + "/api/chat", timeout=60, stream=stream, json={
        "model": f"h-{mode}", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    if not stream:
        return resp.status_code, [resp.json()]
    return resp.status_code, [json.loads(line) for line in resp.iter_lines() if line]


def attacked(srv: Srv, mode: str, stream: bool) -> tuple[int, list[dict]]:
    before = tree_rss(srv.pid)
    run = beside(srv.url, "tiny", lambda: ask(srv, mode, stream), pid=srv.pid)
    print(f"{mode} stream={stream}: {run.row()}; rss before {before >> 20} MiB")
    assert not isinstance(run.result, Exception), run.result
    run.assert_unhurt()
    assert run.seconds < ANSWER_WITHIN, run.seconds
    assert run.peak_rss - before < RSS_GROWTH, (run.peak_rss >> 20, before >> 20)
    return run.result


def assert_error(status: int, objs: list[dict], stream: bool, statuses: tuple[int, ...],
                 words: str) -> None:
    """An error in Ollama's shape: the status and `{"error"}` body, or a stream's last line."""
    if stream:
        assert status == 200 and "error" in objs[-1], objs[-3:]
        assert words in objs[-1]["error"], objs[-1]
    else:
        assert status in statuses, (status, objs)
        assert words in objs[0]["error"], objs
        assert len(objs[0]["error"]) < 600, objs


# mode, stream, statuses, words in the error
CASES = [
    ("trickle", False, (504,), "no complete event"),
    ("trickle", True, (504,), "no complete event"),
    ("trickle-json", False, (504,), "did not send its whole answer"),
    ("endless", False, (502,), "over"),
    ("huge-line", False, (502,), "line over"),
    ("huge-line", True, (502,), "line over"),
    ("gzip-bomb", False, (502,), "OpenAI-protocol endpoint"),  # cut or refused, never read
    ("gzip-bomb", True, (502,), "OpenAI-protocol endpoint"),
    ("huge-json", False, (502,), "over"),
    ("invalid-sse", False, (502,), "not JSON"),
    ("invalid-sse", True, (502,), "not JSON"),
    ("html", False, (502,), "no completion"),
    ("html-500", False, (502,), "answered 500"),
    ("huge-error", False, (502,), "answered 500"),
    ("wrong-type", False, (502,), "no completion"),
    ("close-mid", False, (502,), "ended before"),
    ("close-mid", True, (502,), "ended before"),
    ("silent", False, (504,), "timed out"),
]


@pytest.mark.parametrize(("mode", "stream", "statuses", "words"), CASES,
                         ids=[f"{c[0]}-{'stream' if c[1] else 'whole'}" for c in CASES])
def test_hostile_remote_gets_a_clear_error_and_hurts_nobody(srv, mode, stream, statuses, words):
    status, objs = attacked(srv, mode, stream)
    assert_error(status, objs, stream, statuses, words)


def test_an_endless_stream_read_by_its_client_keeps_memory_flat(srv):
    """A streamed answer is passed on, not kept: a client reading 60 MB of an endless remote
    stream does not grow the bridge by 60 MB (before: every piece was kept for a merge)."""
    def read_60mb() -> int:
        got = 0
        with requests.post(srv.url + "/api/chat", timeout=60, stream=True, json={
                "model": "h-endless", "messages": [{"role": "user", "content": "hi"}]}) as resp:
            for line in resp.iter_lines():
                got += len(line)
                if got > 60 << 20:
                    break
        return got

    before = tree_rss(srv.pid)
    run = beside(srv.url, "tiny", read_60mb, pid=srv.pid)
    print(f"endless streamed 60 MB: {run.row()}; rss before {before >> 20} MiB")
    run.assert_unhurt()
    assert run.result > 60 << 20
    assert run.peak_rss - before < 40 << 20, (run.peak_rss >> 20, before >> 20)


def test_a_flood_of_requests_to_a_silent_remote_leaves_threads_for_the_rest(srv):
    """20 requests at once to a remote that never answers (row timeout 6 s) on a worker of 16
    threads: before, they took every thread and /api/version waited for the timeout; now 8 wait
    (504 after 6 s), the other 12 are refused at once with 503 `server busy`, and the normal
    requests beside them answer."""
    results: list[tuple[int, float]] = []

    def one() -> None:
        start = time.perf_counter()
        resp = requests.post(srv.url + "/api/chat", timeout=60, json={
            "model": "h-silent-long", "messages": [{"role": "user", "content": "hi"}],
            "stream": False})
        results.append((resp.status_code, time.perf_counter() - start))
        if resp.status_code == 503:
            assert "server busy" in resp.json()["error"], resp.text

    def flood() -> list[tuple[int, float]]:
        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    run = beside(srv.url, "tiny", flood, pid=srv.pid)
    print(f"flood of 20: {run.row()}; {sorted(results)}")
    run.assert_unhurt()
    statuses = sorted(status for status, _ in results)
    assert statuses == [503] * 12 + [504] * 8, results
    assert all(seconds < 3 for status, seconds in results if status == 503), results
    # the cap frees as answers end: a request now is admitted again (and times out)
    assert requests.post(srv.url + "/api/chat", timeout=60, json={
        "model": "h-silent", "messages": [], "stream": False}).status_code != 503


def test_an_endless_line_through_the_v1_passthrough_keeps_memory_flat(srv):
    """/v1/chat/completions is relayed to the remote as it came; the relay watches the bytes for
    the final usage. A line that says "done" and never ends was kept whole by that watcher
    (and re-split at every chunk); now a line over 1 MiB is dropped from it."""
    def read_100mb() -> int:
        got = 0
        with requests.post(srv.url + "/v1/chat/completions", timeout=60, stream=True, json={
                "model": "h-huge-done-line", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}) as resp:
            for chunk in resp.iter_content(1 << 16):
                got += len(chunk)
                if got > 100 << 20:
                    break
        return got

    before = tree_rss(srv.pid)
    run = beside(srv.url, "tiny", read_100mb, pid=srv.pid)
    print(f"endless line via /v1 passthrough: {run.row()}; rss before {before >> 20} MiB")
    run.assert_unhurt()
    assert run.result > 100 << 20
    assert run.peak_rss - before < 40 << 20, (run.peak_rss >> 20, before >> 20)


def test_a_remote_closing_mid_stream_through_the_v1_passthrough_ends_with_an_error(srv):
    """/v1 is relayed as it came; a remote that closes after one event (a crash, a kill -9 of
    mlx_lm.server) looked like a whole answer: 200, the event, EOF, recorded ok. Now the
    stream's last event is an error the openai SDK raises on."""
    with requests.post(srv.url + "/v1/chat/completions", timeout=60, stream=True, json={
            "model": "h-close-mid", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status_code == 200
        events = [line for line in resp.iter_lines() if line.startswith(b"data:")]
    assert len(events) == 2, events
    last = json.loads(events[-1][5:])
    assert "ended before the answer was complete" in last["error"]["message"], last
