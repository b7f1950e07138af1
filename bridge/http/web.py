"""HTTP plumbing shared by the blueprints: JSON/NDJSON encoding, errors, request ids, logging."""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from bridge.errors import BridgeError, ServerBusy
from bridge.http import limits, security
from bridge.wire.anthropic_out import anthropic_error
from bridge.wire.native_out import error_line
from bridge.wire.openai_out import error_object

log = logging.getLogger("bridge.http")

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
# httpx splits lines at these too (spec §9): escape them inside JSON strings.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}
FOREVER_DATE = datetime(2318, 1, 1, tzinfo=timezone.utc)


def dumps(obj: Any) -> str:
    """Compact JSON safe for line-oriented clients."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in _LINE_BREAKS.items():
        if ch in text:
            text = text.replace(ch, esc)
    return text


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status=status, content_type="application/json; charset=utf-8")


def ndjson_stream(lines: Iterable[dict[str, Any]]) -> Response:
    """A streamed NDJSON response: one object per line, each flushed as produced."""
    return Response((dumps(o) + "\n" for o in lines), content_type=NDJSON,
                    headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})


def sse_response(events: Iterable[str]) -> Response:
    """A streamed server-sent-events response (the /v1 layers), each event flushed as produced."""
    return Response(events, content_type=SSE,
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def rfc3339(ts: float | datetime | None = None) -> str:
    """UTC RFC3339 with microseconds and a Z, as Ollama's clients parse it."""
    if ts is None:
        dt = datetime.now(timezone.utc)
    elif isinstance(ts, datetime):
        dt = ts.astimezone(timezone.utc)
    elif ts == float("inf") or ts > FOREVER_DATE.timestamp():
        dt = FOREVER_DATE
    else:
        dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def error_body(message: str, status: int,
               details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Native, Anthropic or OpenAI error shape depending on the path (`details`: Anthropic's)."""
    if anthropic_path():
        return anthropic_error(status, message, request_id(), details)
    if request.path.startswith("/v1/"):
        return error_object(message, _openai_type())
    return error_line(message)


def anthropic_path() -> bool:
    return request.path == "/v1/messages" or request.path.startswith("/v1/messages/")


def _openai_type() -> str:
    return getattr(g, "openai_error_type", "api_error")


def handle_bridge_error(exc: BridgeError) -> Response:
    g.openai_error_type = exc.openai_type
    # Anthropic's "overloaded" status is 529 (its SDK raises OverloadedError and retries).
    status = 529 if isinstance(exc, ServerBusy) and anthropic_path() else exc.status
    log.debug("request failed request_id=%s status=%d error=%r", request_id(), status, exc.message)
    response = json_response(error_body(exc.message, status, exc.details), status)
    retry_after = getattr(exc, "retry_after", None)  # TooManyRequests
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def handle_http_error(exc: HTTPException) -> Response:
    """Werkzeug errors: Go's plain-text 404/405 on native paths, JSON elsewhere."""
    code = exc.code or 500
    if code in (404, 405) and not request.path.startswith("/v1/"):
        text = "404 page not found" if code == 404 else "405 method not allowed"
        return Response(text, status=code, content_type="text/plain; charset=utf-8")
    g.openai_error_type = ("not_found_error" if code == 404  # OpenAI's type for a 404 (spec §3)
                           else "invalid_request_error" if code < 500 else "api_error")
    return json_response(error_body(exc.description or exc.name, code), code)


def handle_unexpected(exc: Exception) -> Response:
    if _malformed_body(exc):  # gunicorn's parser, reading a body the main loop did not frame
        return json_response(error_body(f"malformed request body: {type(exc).__name__}", 400),
                             400)
    log.exception("unhandled error request_id=%s path=%s", request_id(), request.path)
    return json_response(error_body(f"internal error: {type(exc).__name__}", 500), 500)


def _malformed_body(exc: Exception) -> bool:
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:  # another WSGI server
        return False
    return isinstance(exc, ParseException)


@dataclass
class RequestContext:
    """One request's identity and timing, made once when it starts and read by everything it
    reaches: the engine job (request_id), dispatch (model, backend, fallback_from), the tracker
    (started_ns) and the request log line."""

    request_id: str
    started_ns: int
    model: str = "-"
    backend: str = "-"  # the target serving it now ("mlx", or "ollama@<endpoint>")
    fallback_from: str | None = None  # the backend of a target that failed before this one
    api_key: str | None = None  # the name of the API key the request came with (http/auth.py)


def context() -> RequestContext:
    """This request's context (made on first use when the hooks did not run: a bare context)."""
    ctx = g.get("ctx")
    if ctx is None:
        ctx = g.ctx = RequestContext(_new_request_id(), time.perf_counter_ns())
    return ctx


def request_id() -> str:
    return context().request_id


def _new_request_id() -> str:
    return request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex[:16]


def _begin_request() -> None:
    g.ctx = RequestContext(_new_request_id(), time.perf_counter_ns())


def _end_request(response: Response) -> Response:
    """Log the request when its response is closed: a stream's `ms` is the whole stream."""
    ctx = context()
    response.headers["X-Request-ID"] = ctx.request_id
    if ctx.backend != "-":  # who served it (the Admin UI's playground shows it)
        response.headers["X-Bridge-Backend"] = ctx.backend
    method, path, status = request.method, request.path, response.status_code
    response.call_on_close(lambda: log.info(
        "request request_id=%s method=%s path=%s status=%d backend=%s model=%s ms=%.1f",
        ctx.request_id, method, path, status, ctx.backend, ctx.model,
        (time.perf_counter_ns() - ctx.started_ns) / 1e6))
    return response


def install(app: Flask) -> None:
    """Register the error mapping and request-id/logging hooks on an app."""
    app.register_error_handler(BridgeError, handle_bridge_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected)
    app.before_request(_begin_request)
    security.install(app)  # Host check and CORS, before anything reads the body
    limits.install(app)
    app.after_request(_end_request)


def client_gone_probe() -> Callable[[], bool] | None:
    """A check whether this request's client has hung up, to call while it waits for its answer.

    gunicorn (`gunicorn.socket`) and werkzeug's dev server (`werkzeug.socket`) put the client's
    socket in the WSGI environ; elsewhere (the Flask test client, TLS) there is no probe (None)
    and a hang-up is noticed only when the response is written.
    """
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    return lambda: peer_closed(sock)


def peer_closed(sock: socket.socket) -> bool:
    """True once the peer has closed the connection (EOF) or reset it. Never consumes data: a
    pipelined next request stays in the socket. Like Go's net/http, which Ollama runs on, an EOF
    counts as a hang-up even if the client may only have closed its sending side."""
    try:
        poller = select.poll()  # poll, not select: no limit on the descriptor number
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed
        return True

