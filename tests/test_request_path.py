"""The request path's seams: collaborators injected through create_app, one make_job, the
records a fallback leaves, and the request log line of a stream (timed to its end)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.app import create_app
from bridge.config import load_config
from bridge.engine import Engine, PromptSpec
from bridge.routing.router import Plan
from bridge.serving.embeddings import EmbedRequest
from bridge.serving.generation import make_job
from bridge.state import bridge, bridge_of
from bridge.testing import build_tiny_model
from bridge.wire.limits import Limits
from bridge.wire.options import parse_options
from bridge.wire.schemas import parse_chat

from .conftest import start_server, stop_server, write_mappings

GREEDY = {"temperature": 0, "num_predict": 6}


class FakeResponse:
    """What `relay` reads from a requests.Response: one JSON object."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.status_code = 200
        self.headers = {"Content-Type": "application/json; charset=utf-8"}
        self.url = "http://fake-upstream"
        self.body = json.dumps(answer).encode()
        self.raw = None  # no urllib3 response: iter_chunks reads iter_content

    def iter_content(self, chunk_size: int | None = None):
        yield self.body

    def close(self) -> None:
        pass


class FakeUpstream:
    """Stands in for bridge.routing.upstream.Upstream: records what it was asked."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def open(self, base_url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, **_: Any) -> FakeResponse:
        self.calls.append((base_url, path, dict(headers or {})))
        return FakeResponse({"model": "m", "response": "from upstream", "done": True,
                             "eval_count": 2, "eval_duration": 1_000_000,
                             "prompt_eval_count": 3})

    def stop(self) -> None:
        self.stopping.set()

    def get_json(self, base_url: str, path: str) -> None:
        return None

    def probe(self, base_url: str) -> str | None:
        return None


def broken_weights(root: Path) -> Path:
    broken = root / "broken-weights"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return broken


def records(app, model: str) -> list[tuple[str, str, str | None, str | None]]:
    """The request log's (backend, status, error, fallback_from) rows for a model, oldest first."""
    state = bridge_of(app)
    assert state.tracker.flush()
    with sqlite3.connect(state.store.path) as db:
        return db.execute("SELECT backend, status, error, fallback_from FROM requests "
                          "WHERE model = ? ORDER BY id", (model,)).fetchall()


@pytest.fixture()
def injected(tmp_path, tiny_model_dir):
    """An in-process app whose upstream is a fake and whose engine the test made."""
    mappings = write_mappings(tmp_path / "map.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "broken": {"mlx": str(broken_weights(tmp_path)), "backend": "auto"},
    }, upstream="http://fake-upstream:1")
    engine, upstream = Engine(max_queue=7), FakeUpstream()
    app = create_app(load_config({}, mappings_path=mappings, home=tmp_path / "home"),
                     engine=engine, upstream=upstream)
    bridge_of(app).start()
    yield app, engine, upstream
    bridge_of(app).stop()


def test_create_app_uses_the_injected_engine_and_upstream(injected) -> None:
    app, engine, upstream = injected
    assert bridge_of(app).local.engine is engine and bridge_of(app).upstream is upstream
    resp = app.test_client().post("/api/generate", json={"model": "elsewhere", "prompt": "hi",
                                                         "stream": False},
                                  headers={"X-Request-ID": "req-42"})
    assert resp.status_code == 200, resp.get_data()
    assert resp.get_json()["response"] == "from upstream"
    assert [(url, path) for url, path, _ in upstream.calls] == [("http://fake-upstream:1",
                                                                  "/api/generate")]
    assert upstream.calls[0][2]["X-Request-ID"] == "req-42"  # the bridge's id travels on
    assert records(app, "elsewhere") == [("ollama", "ok", None, None)]


def test_a_failed_mlx_attempt_that_falls_back_leaves_a_record(injected) -> None:
    app, _, upstream = injected
    resp = app.test_client().post("/api/generate", json={"model": "broken", "prompt": "hi",
                                                         "stream": False})
    assert resp.status_code == 200 and resp.get_json()["response"] == "from upstream"
    assert len(upstream.calls) == 1
    (mlx, mlx_status, error, _), served = records(app, "broken")
    assert (mlx, mlx_status) == ("mlx", "error")
    assert error.startswith("ModelLoadError: ")
    assert served == ("ollama", "ok", None, "mlx")  # the answer says where it fell back from


@pytest.fixture(scope="module")
def real_upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-upstream")
    mappings = write_mappings(root / "map.yaml", {
        "broken": {"mlx": str(build_tiny_model(root / "broken", seed=8)), "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


def test_fallback_record_with_a_real_upstream(tmp_path, real_upstream) -> None:
    """The same through the real Upstream client and a real upstream server process."""
    mappings = write_mappings(tmp_path / "map.yaml", {
        "broken": {"mlx": str(broken_weights(tmp_path)), "backend": "auto"},
    }, upstream=real_upstream)
    app = create_app(load_config({}, mappings_path=mappings, home=tmp_path / "home"))
    bridge_of(app).start()
    try:
        with app.test_client().post("/api/generate", json={"model": "broken", "prompt": "hello",
                                                           "options": GREEDY},
                                    buffered=False) as resp:
            lines = [json.loads(line) for line in resp.get_data().splitlines() if line]
        direct = requests.post(real_upstream + "/api/generate", timeout=60, json={
            "model": "broken", "prompt": "hello", "options": GREEDY, "stream": False}).json()
        assert "".join(line["response"] for line in lines) == direct["response"]
        (mlx, status, error, _), (backend, ok, _, fallback_from) = records(app, "broken")
        assert (mlx, status, backend, ok, fallback_from) == ("mlx", "error", "ollama", "ok", "mlx")
        assert "ModelLoadError" in error
    finally:
        bridge_of(app).stop()


def test_make_job_precedence_request_then_row_then_mapping(app) -> None:
    """One make_job for chat and embeddings: request options, then the admin row's defaults,
    then the mapping file's; keep_alive from the request, else the mapping."""
    with app.test_request_context("/api/chat", headers={"X-Request-ID": "job-id"}):
        model = bridge().local.require("tiny")
        model = replace(model, entry=replace(model.entry, keep_alive=60.0, options={
            "temperature": 0.9, "top_k": 3, "num_ctx": 512}))
        plan = Plan("tiny", "mlx", [], defaults={"temperature": 0.5, "top_k": 7})
        chat = parse_chat({"model": "tiny", "messages": [], "options": {"temperature": 0.1}},
                          Limits())
        embed = EmbedRequest("tiny", ["x"], options=parse_options({"temperature": 0.1}),
                             keep_alive=5.0)
        for req, keep_alive in ((chat, 60.0), (embed, 5.0)):
            job = make_job(req, model, plan, PromptSpec(prompt="x"))
            options = job.options
            assert (options.temperature, options.top_k, options.num_ctx) == (0.1, 7, 512)
            assert job.keep_alive == keep_alive and job.request_id == "job-id"


def test_request_log_of_a_stream_times_the_whole_stream(app, caplog) -> None:
    """`ms=` is logged when the response closes: a stream read slowly shows its full length."""
    with caplog.at_level(logging.INFO, logger="bridge.http"):
        resp = app.test_client().post("/api/chat", buffered=False, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "options": GREEDY})
        chunks = iter(resp.response)
        first = next(chunks)
        assert b'"done":false' in first or b'"done":true' in first
        time.sleep(1.0)  # the client is slow: the request is not over until the stream is
        assert not [r for r in caplog.records if r.getMessage().startswith("request ")]
        for _ in chunks:
            pass
        resp.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert len(lines) == 1 and "path=/api/chat status=200 backend=mlx model=tiny" in lines[0]
    assert float(lines[0].rsplit("ms=", 1)[1]) >= 1000


def test_tracker_prunes_once_per_prune_interval(tmp_path) -> None:
    """The first batch prunes (the file may hold more than is kept); after that only every
    _PRUNE_EVERY records, not after every batch."""
    from bridge.stats.metrics import Metrics
    from bridge.stats.records import RequestRecord
    from bridge.stats.store import Store
    from bridge.stats.tracking import _PRUNE_EVERY, Tracker

    class CountingStore(Store):
        prunes = 0

        def prune(self, keep: int) -> int:
            CountingStore.prunes += 1
            return super().prune(keep)

    tracker = Tracker(CountingStore(tmp_path / "db.sqlite"), Metrics())
    rec = RequestRecord(model="m", backend="mlx", endpoint=None, status="ok", prompt_tokens=1,
                        eval_tokens=1, ttft_ms=1.0, latency_ms=2.0, tokens_per_sec=None)
    for _ in range(_PRUNE_EVERY // 10 * 2):  # two intervals' worth, in batches of 10
        for _ in range(10):
            tracker.record(rec)
        tracker.flush()
    assert CountingStore.prunes == 2  # the first batch, then one per interval (not 200)
