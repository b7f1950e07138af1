"""Carry out a routing Plan: try each target in order, falling back only before the first byte."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import requests
from flask import Response, request

from bridge.errors import (
    BridgeError,
    ClientClosed,
    EngineError,
    ModelNotFound,
    ShuttingDown,
    Unsupported,
    UpstreamError,
)
from bridge.http.web import (
    RequestContext,
    client_gone_probe,
    context,
    json_response,
    ndjson_stream,
)
from bridge.routing import openai_remote, openai_request, openai_stream
from bridge.routing.refusals import check_model_name, local_only, not_found_text, unserved
from bridge.routing.router import Plan, Target
from bridge.routing.upstream import (
    OnFinal,
    UpstreamUnavailable,
    iter_chunks,
    redact_url,
    relay,
)
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.stats.tracking import CANCELED_ERRORS, record_failed_attempt, record_forwarded
from bridge.wire.native_out import error_line

log = logging.getLogger(__name__)

# Failures that mean "this target cannot serve it", so the next target may: never a client error.
FALLBACK_ERRORS = (ModelNotFound, EngineError, Unsupported, UpstreamError)
MAX_REMOTE_BODY = 256 << 20  # a non-streamed remote answer read whole (embeddings of big batches)
MAX_REMOTE_ERROR = 64 << 10  # of an error answer: only its first 300 characters are shown

LocalHandler = Callable[[LocalModel, Plan], Response]

def dispatch(model_name: str, path: str, raw: bytes, local: LocalHandler | None,
             method: str = "POST") -> Response:
    """Serve a model request from the first target of its plan that can take it."""
    check_model_name(model_name)  # before routing: an invalid name is never forwarded or recorded
    state, ctx = bridge(), context()
    plan = state.router.plan(model_name)
    ctx.model = model_name
    targets = [t for t in plan.targets if not t.local or local is not None]
    if not targets:
        if plan.targets:  # served here, by the MLX engine, which has no handler for this path
            raise local_only(model_name, path)
        raise ModelNotFound(model_name, text=not_found_text(model_name, path)
                            + _nowhere_to_forward(model_name, plan))
    failed: list[BridgeError] = []
    for i, target in enumerate(targets):
        ctx.backend = target.label
        last = i == len(targets) - 1
        try:
            if target.local:
                assert local is not None
                return local(state.local.require(model_name, source=target.source), plan)
            if target.protocol == "openai" and not path.startswith("/v1/"):
                return serve_openai(target, path, raw, plan, last)
            return forward(target, path, raw, plan, last=last, method=method)
        except FALLBACK_ERRORS as exc:
            failed.append(exc)
            if i == len(targets) - 1:
                if isinstance(exc, UpstreamUnavailable):  # the endpoint is down: its failure
                    record_failed_attempt(state.tracker, ctx, target.backend,
                                          redact_url(target.endpoint), type(exc).__name__,
                                          exc.message)
                raise unserved(model_name, path, target, failed) from None
            note_fallback(ctx, target, targets[i + 1], exc)
    raise AssertionError("unreachable")


def _nowhere_to_forward(model_name: str, plan: Plan) -> str:
    """Why a model the bridge knows (an admin row or a mapping entry whose backend is
    `ollama`) has no target: no upstream is configured to forward it to ("" otherwise)."""
    state = bridge()
    known = state.registry.lookup(model_name) is not None or state.router.has_rows(model_name)
    if not known or state.upstream_url:
        return ""
    return (f"; its backend is {plan.policy} (an admin row or the mapping file), which forwards "
            "to the upstream Ollama, and none is configured (--upstream none)")


def note_fallback(ctx: RequestContext, failed: Target, nxt: Target, exc: BridgeError) -> None:
    """Log and record the failed attempt (a request record and the fallback counter)."""
    reason = type(exc).__name__
    log.warning("fallback request_id=%s model=%s from=%s to=%s reason=%s error=%r",
                ctx.request_id, ctx.model, failed.label, nxt.label, reason, exc.message)
    tracker = bridge().tracker
    record_failed_attempt(tracker, ctx, failed.backend, redact_url(failed.endpoint), reason,
                          exc.message)
    tracker.fallback(ctx.model, failed.backend, nxt.backend, reason)
    ctx.fallback_from = failed.backend


def forward(target: Target, path: str, raw: bytes, plan: Plan | None = None, last: bool = True,
            method: str = "POST") -> Response:
    """Relay the request to one upstream endpoint as it came (the model renamed to the
    endpoint's `remote_model`, a row's defaults filled in); the answer streams back unchanged."""
    body = raw
    if isinstance(raw, bytes) and plan is not None:
        body = request_body(raw, plan.defaults, target.remote_model,
                            openai=path.startswith("/v1/"))
    resp, opened_ns = open_endpoint(target, method, path, body, last)
    # Only a model's request is tracked (per model and backend); a relayed path without a model
    # (/api/status, blobs) would be a row under the model "-" in the comparison.
    on_final = tracking(target, resp.status_code, opened_ns) if plan is not None else _untracked
    return relay(resp, on_final, bridge().upstream.stopping)


def _untracked(final: dict[str, Any] | None, error: str | None, first_at: float | None) -> None:
    """The relay's end hook for a request that names no model: nothing to record."""


def open_endpoint(target: Target, method: str, path: str, body: Any,
                  last: bool) -> tuple[requests.Response, int]:
    """Send one request to a remote endpoint, keeping its circuit breaker: a connect failure, a
    redirect or a 5xx (when another target is left) raise, so the next target may serve it.

    A redirect is never followed (it would take the request, and the endpoint's key, elsewhere):
    it counts as a failure of the endpoint, reported with 502 when no other target is left.
    """
    state, ctx = bridge(), context()
    assert target.endpoint is not None
    headers = {k: v for k, v in request.headers.items() if k.lower() != "x-request-id"}
    headers["X-Request-ID"] = ctx.request_id  # the bridge's id: one id in both logs
    if target.protocol == "openai" and not path.startswith("/v1/"):
        headers = {"Content-Type": "application/json", "X-Request-ID": ctx.request_id}
    breaker = state.router.breaker
    opened_ns = time.perf_counter_ns()  # the upstream's own latency: from here, not the request's
    try:
        resp = state.upstream.open(target.endpoint, method, path, body, headers,
                                   read_timeout=target.timeout, api_key=api_key(target),
                                   who=target.who)
    except UpstreamUnavailable as exc:
        breaker.failure(target.endpoint, exc.message)
        raise
    shown, status = redact_url(target.endpoint), resp.status_code
    if 300 <= status < 400:
        resp.close()
        breaker.failure(target.endpoint, f"HTTP {status} redirect")
        raise UpstreamError(f"upstream at {shown} answered a redirect (HTTP {status}); "
                            "redirects are not followed: set the endpoint's final URL")
    if status >= 500 and not last:
        resp.close()
        breaker.failure(target.endpoint, f"HTTP {status}")
        raise UpstreamError(f"upstream {shown} answered {status}")
    breaker.success(target.endpoint)
    return resp, opened_ns


def tracking(target: Target, status: int, opened_ns: int) -> OnFinal:
    """The hook that records a remote answer once it has ended (tracking, the comparison)."""
    tracker, ctx, shown = bridge().tracker, context(), redact_url(target.endpoint)

    def on_final(final: dict[str, Any] | None, error: str | None, first_at: float | None) -> None:
        # runs in the relay, after the view returned (no app context): uses only bound objects
        first_ns = int(first_at * 1e9) if first_at is not None else None  # perf_counter's clock
        record_forwarded(tracker, ctx, target.backend, shown, status, final, error, opened_ns,
                         first_ns)
    return on_final


def serve_openai(target: Target, path: str, raw: bytes, plan: Plan, last: bool) -> Response:
    """A native request answered by an OpenAI-protocol endpoint (see routing/openai_remote.py)."""
    name = context().model
    remote_model = target.remote_model or name
    shown = redact_url(target.endpoint)
    if path == "/api/show":
        return json_response(openai_remote.show_body(name, remote_model, shown,
                                                     _listed(target, remote_model)))
    call = openai_request.convert(path, raw, name, remote_model, plan.defaults)
    resp, opened_ns = open_endpoint(target, "POST", call.path, json.dumps(call.body).encode(),
                                    last)
    on_final = tracking(target, resp.status_code, opened_ns)
    timeout = target.timeout or bridge().upstream.read_timeout
    deadline = time.monotonic() + timeout  # for a whole (non-streamed) body: no trickling
    if resp.status_code >= 400:
        text = _read_text(resp, MAX_REMOTE_ERROR, deadline, cut=True)
        error = openai_stream.remote_error(resp.status_code, text, name, shown)
        if last or not isinstance(error, FALLBACK_ERRORS):  # else note_fallback records it
            on_final(None, f"HTTP {resp.status_code}", None)
        raise error
    if not (call.stream or last):
        on_final = _unless_failed(on_final)  # a failure falls back: note_fallback records it
    if call.kind in ("embed", "embeddings"):
        body = openai_stream.checked(openai_remote.embed_answer, call,
                                     _json(_read_text(resp, deadline=deadline)), opened_ns)
        on_final({"prompt_eval_count": body.get("prompt_eval_count", 0)}, None, None)
        return json_response(body)
    answer = openai_remote.Answer(call, opened_ns)
    if "event-stream" in resp.headers.get("Content-Type", ""):
        chunks = openai_stream.sse_objects(iter_chunks(resp), idle=timeout)
    else:  # a remote that does not stream: its whole answer as one chunk
        whole = _json(_read_text(resp, openai_stream.MAX_ANSWER, deadline))
        chunks = iter([openai_stream.checked(openai_stream.as_chunk, whole)])
    lines = converted_lines(answer, chunks, resp, on_final, bridge().upstream.stopping,
                            context().request_id)
    if call.stream:
        return ndjson_stream(lines)
    gone = client_gone_probe()
    for _ in lines:  # read to the end (merged below); a broken stream raises here: a status
        if gone is not None and gone():  # the client hung up: stop the remote's generation too
            lines.close()
            raise ClientClosed("client disconnected")
    return json_response(answer.merged())


def converted_lines(answer: openai_remote.Answer, chunks: Iterator[dict[str, Any]],
                    resp: requests.Response, on_final: OnFinal, stopping: threading.Event,
                    request_id: str) -> Generator[dict[str, Any], None, None]:
    """The remote's SSE stream as Ollama's NDJSON objects; the last is `done: true` or an error
    line (a broken stream, the server's shutdown). Records the request once it has ended.

    Runs after the view returned when streamed: uses only what it was given (no app context).
    """
    error: str | None = None
    final: dict[str, Any] | None = None
    try:
        for obj in chunks:
            if stopping.is_set():
                raise ShuttingDown()
            line = openai_stream.checked(answer.feed, obj)
            if line is not None:
                yield line
        calls = answer.tool_calls()
        if calls:
            yield answer.line("", calls=calls)
        final = answer.final()
        yield final
    except GeneratorExit:  # the client hung up (or stopped reading): not the remote's failure
        error = "client disconnected"
        raise
    except (requests.RequestException, BridgeError) as exc:
        status = exc.status if isinstance(exc, BridgeError) else 502
        error = exc.message if isinstance(exc, BridgeError) else _lost(exc)
        if "timed out" in error:
            status = 504
        log.warning("remote stream broken request_id=%s model=%s error=%s", request_id,
                    answer.call.name, error)
        if not answer.call.stream:
            raise UpstreamError(error, status=status) from None
        yield error_line(error)
    finally:
        resp.close()
        first = answer.first_ns / 1e9 if answer.first_ns is not None else None
        on_final(final, error, first)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # the converters say what was missing


def _unless_failed(on_final: OnFinal) -> OnFinal:
    def record(final: dict[str, Any] | None, error: str | None, first: float | None) -> None:
        if error is None or error in CANCELED_ERRORS:
            on_final(final, error, first)
    return record


def _lost(exc: requests.RequestException) -> str:
    if "timed out" in str(exc):  # the row's timeout passed with no byte from the remote
        return "upstream timed out: no data within the endpoint's timeout"
    return f"upstream connection lost: {type(exc).__name__}"


def _read_text(resp: requests.Response, limit: int = MAX_REMOTE_BODY,
               deadline: float | None = None, cut: bool = False) -> str:
    """A whole (error or embeddings) answer, at most `limit` bytes (`cut`: the first `limit`,
    else a 502), by `deadline` (time.monotonic(); else a 504): a remote can neither fill the
    bridge's memory nor hold a request by trickling bytes under the read timeout."""
    data = bytearray()
    try:
        for chunk in iter_chunks(resp):
            data += chunk
            if len(data) > limit:
                if cut:
                    break
                raise UpstreamError(f"the answer of {redact_url(resp.url)} is over {limit} bytes")
            if deadline is not None and time.monotonic() > deadline:
                raise UpstreamError(f"{redact_url(resp.url)} did not send its whole answer "
                                    "within the endpoint's timeout", status=504)
        return data[:limit].decode("utf-8", "replace")
    except requests.RequestException as exc:
        raise UpstreamError(_lost(exc), status=504 if "timed out" in str(exc) else 502) from None
    finally:
        resp.close()


def _listed(target: Target, remote_model: str) -> dict[str, Any] | None:
    """The remote's `/v1/models` entry for the model (None when it lists none or is down)."""
    assert target.endpoint is not None
    data = bridge().upstream.get_json(target.endpoint, "/v1/models", api_key(target))
    models = data.get("data") if data else None
    if not isinstance(models, list):
        return None
    return next((m for m in models if isinstance(m, dict) and m.get("id") == remote_model), None)


def api_key(target: Target) -> str | None:
    """The endpoint's key from the environment variable its row names (never the client's)."""
    if not target.api_key_env:
        return None
    key = os.environ.get(target.api_key_env, "").strip()
    if not key:  # a configuration error: another target may still serve the request
        raise UpstreamError(f"the endpoint at {redact_url(target.endpoint)} needs the key in "
                            f"${target.api_key_env}, which is not set in the server's environment")
    return key


def request_body(raw: bytes, defaults: dict[str, Any], remote_model: str | None,
                 openai: bool = False) -> bytes:
    """A forwarded body with an admin row's defaults filled in (request values win) and the
    model renamed to the endpoint's own name; as it came when there is nothing to change.

    Native bodies take the defaults as `options`; OpenAI bodies (`/v1/*`) as `max_tokens` and
    `temperature`.
    """
    if not defaults and not remote_model:
        return raw
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            return raw
        if openai:
            fields = {"max_tokens": defaults.get("num_predict"),
                      "temperature": defaults.get("temperature")}
            for key, value in fields.items():
                if value is not None and body.get(key) is None:
                    body[key] = value
        elif defaults:
            options = body.get("options") if isinstance(body.get("options"), dict) else {}
            body["options"] = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        if remote_model and isinstance(body.get("model"), str):
            body["model"] = remote_model
        return json.dumps(body).encode()
    except (ValueError, RecursionError):  # nested deeper than the stack allows here: as it came
        return raw
