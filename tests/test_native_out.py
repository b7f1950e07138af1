"""The error shapes built once: errors_as_last_line (native streams) and error_object (OpenAI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.errors import BadRequest, EngineError
from bridge.routing.upstream import _error_tail
from bridge.wire.native_out import error_line, errors_as_last_line
from bridge.wire.openai_out import error_object


def _lines(fail: Exception | None, closed: list[bool]) -> Iterator[dict[str, Any]]:
    try:
        yield {"response": "a"}
        yield {"response": "b"}
        if fail:
            raise fail
        yield {"done": True}
    finally:
        closed.append(True)


def test_lines_pass_through_unchanged() -> None:
    closed: list[bool] = []
    assert list(errors_as_last_line(_lines(None, closed))) == [
        {"response": "a"}, {"response": "b"}, {"done": True}]
    assert closed == [True]


def test_bridge_error_mid_stream_is_the_last_line() -> None:
    out = list(errors_as_last_line(_lines(EngineError("model crashed"), [])))
    assert out == [{"response": "a"}, {"response": "b"}, {"error": "model crashed"}]


def test_other_exceptions_propagate() -> None:
    with pytest.raises(ZeroDivisionError):
        list(errors_as_last_line(_lines(ZeroDivisionError(), [])))


def test_closing_the_wrapper_closes_the_source() -> None:
    """A client that goes away closes the response iterator: the work behind it must stop."""
    closed: list[bool] = []
    wrapped = errors_as_last_line(_lines(None, closed))
    assert next(wrapped) == {"response": "a"}
    wrapped.close()
    assert closed == [True]


def test_error_object_is_openais_shape() -> None:
    assert error_object("bad", BadRequest.openai_type) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    assert error_object("boom")["error"]["type"] == "api_error"
    assert error_line("boom") == {"error": "boom"}


def test_relay_error_tail_uses_the_shared_shapes() -> None:
    sse = b"".join(_error_tail("sse", True, "shutting down")).decode()
    assert sse.startswith("\n\ndata: ") and sse.endswith("\n\n")
    assert json.loads(sse.strip()[len("data: "):]) == error_object("shutting down")
    ndjson = b"".join(_error_tail("ndjson", False, "shutting down")).decode()
    assert json.loads(ndjson) == error_line("shutting down")


def test_v1_and_native_errors_in_their_shapes(app) -> None:
    client = app.test_client()
    v1 = client.post("/v1/chat/completions", data="{", content_type="application/json")
    assert v1.status_code == 400
    assert v1.get_json()["error"]["type"] == "invalid_request_error"
    assert set(v1.get_json()["error"]) == {"message", "type", "param", "code"}
    native = client.post("/api/chat", data="{", content_type="application/json")
    assert native.status_code == 400 and isinstance(native.get_json()["error"], str)
