"""Fast tests of dispatch's fallback and the upstream relay against a real local HTTP server
(pytest-httpserver) as the upstream: no bridge server process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from pytest_httpserver import HTTPServer
from werkzeug import Request
from werkzeug import Response as WResponse

from bridge.app import create_app
from bridge.config import load_config
from bridge.routing.upstream import Upstream, relay

from .helpers import ndjson, write_mappings

ANSWER = [{"model": "m", "message": {"role": "assistant", "content": "from upstream"},
           "done": False},
          {"model": "m", "done": True, "done_reason": "stop", "eval_count": 3}]
NDJSON = "".join(json.dumps(line) + "\n" for line in ANSWER)


@pytest.fixture(scope="module")
def routed_app(make_httpserver: HTTPServer, tiny_model_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An in-process bridge whose default upstream is the pytest-httpserver."""
    root = tmp_path_factory.mktemp("relay-unit")
    mappings = write_mappings(root / "map.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        # mapped to weights that are not on disk: MLX cannot serve it
        "gone-auto": {"mlx": "mlx-community/Definitely-Not-Here-4bit", "backend": "auto"},
        "gone-mlx": {"mlx": "mlx-community/Definitely-Not-Here-4bit", "backend": "mlx"},
    })
    config = load_config({}, mappings_path=mappings, home=root / "home",
                         upstream=make_httpserver.url_for("/").rstrip("/"))
    app = create_app(config)
    app.extensions["bridge"].start()
    yield app
    app.extensions["bridge"].stop()


def chat(model: str, stream: bool = True) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def test_mlx_failing_before_the_first_byte_falls_back_to_the_upstream(
        routed_app: Flask, httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request("/api/chat", method="POST").respond_with_data(
        NDJSON, content_type="application/x-ndjson")
    resp = routed_app.test_client().post("/api/chat", json=chat("gone-auto"))
    assert resp.status_code == 200
    assert ndjson(resp.get_data().splitlines()) == ANSWER
    (sent, _), = httpserver.log
    assert json.loads(sent.data)["model"] == "gone-auto"  # the body went upstream as it came


def test_an_mlx_only_model_never_falls_back(routed_app: Flask, httpserver: HTTPServer) -> None:
    resp = routed_app.test_client().post("/api/chat", json=chat("gone-mlx", stream=False))
    assert resp.status_code == 404
    assert "not found" in resp.get_json()["error"]
    assert httpserver.log == []  # the upstream never saw it


def test_a_served_mlx_model_does_not_touch_the_upstream(routed_app: Flask,
                                                        httpserver: HTTPServer) -> None:
    body = {**chat("tiny", stream=False), "options": {"num_predict": 2, "temperature": 0}}
    resp = routed_app.test_client().post("/api/chat", json=body)
    assert resp.status_code == 200 and resp.get_json()["done"] is True
    assert httpserver.log == []


def test_the_upstreams_error_status_and_body_come_back_unchanged(
        routed_app: Flask, httpserver: HTTPServer) -> None:
    # the upstream is the last target: its 4xx/5xx is the answer, not a retry
    httpserver.expect_oneshot_request("/api/chat").respond_with_json(
        {"error": "model 'x' not found"}, status=404)
    resp = routed_app.test_client().post("/api/chat", json=chat("unmapped:1b", stream=False))
    assert resp.status_code == 404
    assert resp.get_json() == {"error": "model 'x' not found"}


def test_an_upstream_that_refuses_marks_the_endpoint_down(tmp_path: Path,
                                                           tiny_model_dir: Path) -> None:
    from .helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = load_config({}, mappings_path=write_mappings(tmp_path / "m.yaml", {}),
                         home=tmp_path / "home", upstream=dead)
    app = create_app(config)
    resp = app.test_client().post("/api/chat", json=chat("unmapped:1b", stream=False))
    assert resp.status_code == 404 and "not running" in resp.get_json()["error"]
    assert app.extensions["bridge"].router.breaker.is_open(dead)


@pytest.fixture(scope="module")
def chunked_server() -> Iterator[HTTPServer]:
    """A threaded HTTPServer: it answers HTTP/1.1 with chunked bodies, as Ollama does (the
    default single-threaded one speaks HTTP/1.0, whose close-delimited body requests reads
    whole)."""
    server = HTTPServer(threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


def gated_stream(gate: threading.Event):
    """A handler streaming the first line at once and the rest only once `gate` is set."""
    def handler(request: Request) -> WResponse:
        def body() -> Iterator[bytes]:
            yield NDJSON.splitlines(keepends=True)[0].encode()
            gate.wait(10)
            yield NDJSON.splitlines(keepends=True)[1].encode()
        return WResponse(body(), status=201, content_type="application/x-ndjson",
                         headers={"Set-Cookie": "s=1", "Cache-Control": "no-cache"})
    return handler


def test_relay_streams_each_chunk_as_it_arrives_with_status_and_safe_headers(
        chunked_server: HTTPServer) -> None:
    httpserver = chunked_server
    gate = threading.Event()
    httpserver.expect_oneshot_request("/api/chat").respond_with_handler(gated_stream(gate))
    finals: list[tuple] = []
    upstream_resp = Upstream().open(httpserver.url_for("/"), "POST", "/api/chat", b"{}")
    out = relay(upstream_resp, lambda final, error, first: finals.append((final, error, first)))
    assert out.status_code == 201
    assert out.headers.get("Cache-Control") == "no-cache" and "Set-Cookie" not in out.headers
    chunks = iter(out.response)
    # the first line arrives while the upstream still holds the second: not buffered
    assert json.loads(next(chunks)) == ANSWER[0]
    assert finals == []
    gate.set()
    assert json.loads(b"".join(chunks)) == ANSWER[1]
    (final, error, first), = finals  # on_final ran once, after the last chunk
    assert final == ANSWER[1] and error is None and first is not None


def test_relay_ends_with_an_error_line_once_stopping_is_set(chunked_server: HTTPServer) -> None:
    httpserver = chunked_server
    gate = threading.Event()
    httpserver.expect_oneshot_request("/api/chat").respond_with_handler(gated_stream(gate))
    stopping = threading.Event()
    finals: list[tuple] = []
    upstream_resp = Upstream().open(httpserver.url_for("/"), "POST", "/api/chat", b"{}")
    out = relay(upstream_resp, lambda *a: finals.append(a), stopping)
    chunks = iter(out.response)
    assert json.loads(next(chunks)) == ANSWER[0]
    stopping.set()  # the grace period is over
    gate.set()
    rest = ndjson(b"".join(chunks).splitlines())
    assert len(rest) == 1 and "shutting down" in rest[0]["error"]
    (final, error, _), = finals
    assert final is None and error == rest[0]["error"]
