"""Carry out a routing Plan: try each target in order, falling back only before the first byte."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from flask import Response, request

from bridge.errors import (
    BadRequest,
    BridgeError,
    EngineError,
    ModelNotFound,
    Unsupported,
    UpstreamError,
    UpstreamNotRunning,
)
from bridge.http.web import RequestContext, context
from bridge.routing.router import Plan, Target
from bridge.routing.upstream import UpstreamUnavailable, redact_url, relay
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.stats.tracking import record_failed_attempt, record_forwarded
from bridge.wire.names import InvalidModelName, ModelName

log = logging.getLogger(__name__)

# Failures that mean "this target cannot serve it", so the next target may: never a client error.
FALLBACK_ERRORS = (ModelNotFound, EngineError, Unsupported, UpstreamError)

LocalHandler = Callable[[LocalModel, Plan], Response]

# Ollama's words for an unknown model where they differ from `model 'x' not found` (reference §5).
_PULL_FIRST = 'model "{name}" not found, try pulling it first'
NOT_FOUND_TEXT = {
    "/api/show": "model '{display}' not found",
    "/api/embed": _PULL_FIRST,
    "/api/embeddings": _PULL_FIRST,
    "/v1/embeddings": _PULL_FIRST,
    "/api/copy": 'model "{name}" not found',
    "/api/pull": "pull model manifest: file does not exist",
}


def dispatch(model_name: str, path: str, raw: bytes, local: LocalHandler | None,
             method: str = "POST") -> Response:
    """Serve a model request from the first target of its plan that can take it."""
    check_model_name(model_name)  # before routing: an invalid name is never forwarded or recorded
    state, ctx = bridge(), context()
    plan = state.router.plan(model_name)
    ctx.model = model_name
    targets = [t for t in plan.targets if t.backend != "mlx" or local is not None]
    if not targets:
        raise ModelNotFound(model_name)
    failed: list[BridgeError] = []
    for i, target in enumerate(targets):
        ctx.backend = target.label
        try:
            if target.backend == "mlx":
                assert local is not None
                return local(state.local.require(model_name, source=target.source), plan)
            return forward(target, path, raw, plan, last=i == len(targets) - 1, method=method)
        except FALLBACK_ERRORS as exc:
            failed.append(exc)
            if i == len(targets) - 1:
                raise unserved(model_name, path, target, failed) from None
            note_fallback(ctx, target, targets[i + 1], exc)
    raise AssertionError("unreachable")


def check_model_name(name: str) -> None:
    """400 `invalid model name` for what Ollama's name rules reject; the empty name is Ollama's
    404."""
    if not name:
        raise ModelNotFound(name)
    try:
        ModelName.parse(name)
    except InvalidModelName:
        raise BadRequest("invalid model name") from None


def unserved(name: str, path: str, last: Target, failed: list[BridgeError]) -> BridgeError:
    """The error for a request no target could serve: the last target's, or a 404.

    When the last target is an upstream that refuses connections (no Ollama running there) and
    nothing before it had the model, the name is unknown: the endpoint's 404 in Ollama's words,
    saying why, instead of a 502.
    """
    error = failed[-1]
    if not _refused(error) or not all(isinstance(e, ModelNotFound) or _refused(e) for e in failed):
        return error
    template = NOT_FOUND_TEXT.get(path, "model '{name}' not found")
    display = ModelName.parse(name).display
    shown = redact_url(last.endpoint)
    log.warning("model not found request_id=%s model=%s reason=upstream_not_running endpoint=%s",
                context().request_id, name, shown)
    return UpstreamNotRunning(template.format(name=name, display=display)
                              + f"; the upstream Ollama at {shown} is not running "
                              "(connection refused)")


def _refused(exc: BridgeError) -> bool:
    return isinstance(exc, UpstreamUnavailable) and exc.refused


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
    """Relay the request to one upstream endpoint; a 5xx or connect failure may fall through.

    A redirect is never followed (it would take the request, and the endpoint's key, elsewhere):
    it counts as a failure of the endpoint, reported with 502 when no other target is left.
    """
    state, ctx = bridge(), context()
    assert target.endpoint is not None
    body = apply_defaults(raw, plan.defaults) if plan and plan.defaults else raw
    headers = {k: v for k, v in request.headers.items() if k.lower() != "x-request-id"}
    headers["X-Request-ID"] = ctx.request_id  # the bridge's id: one id in both logs
    breaker = state.router.breaker
    opened_ns = time.perf_counter_ns()  # the upstream's own latency: from here, not the request's
    try:
        resp = state.upstream.open(target.endpoint, method, path, body, headers,
                                   read_timeout=target.timeout, api_key=api_key(target))
    except UpstreamUnavailable as exc:
        breaker.failure(target.endpoint, exc.message)
        raise
    shown, status = redact_url(target.endpoint), resp.status_code
    if 300 <= status < 400:
        resp.close()
        breaker.failure(target.endpoint, f"HTTP {status} redirect")
        raise UpstreamError(f"upstream Ollama at {shown} answered a redirect (HTTP {status}); "
                            "redirects are not followed: set the endpoint's final URL")
    if status >= 500 and not last:
        resp.close()
        breaker.failure(target.endpoint, f"HTTP {status}")
        raise UpstreamError(f"upstream {shown} answered {status}")
    breaker.success(target.endpoint)
    tracker = state.tracker

    def on_final(final: dict[str, Any] | None, error: str | None, first_at: float | None) -> None:
        # runs in the relay, after the view returned (no app context): uses only bound objects
        first_ns = int(first_at * 1e9) if first_at is not None else None  # perf_counter's clock
        record_forwarded(tracker, ctx, target.backend, shown, status, final, error, opened_ns,
                         first_ns)

    return relay(resp, on_final, state.upstream.stopping)


def api_key(target: Target) -> str | None:
    """The endpoint's key from the environment variable its row names (never the client's)."""
    if not target.api_key_env:
        return None
    key = os.environ.get(target.api_key_env, "").strip()
    if not key:  # a configuration error: another target may still serve the request
        raise UpstreamError(f"upstream Ollama at {redact_url(target.endpoint)} needs the key in "
                            f"${target.api_key_env}, which is not set in the server's environment")
    return key


def apply_defaults(raw: bytes, defaults: dict[str, Any]) -> bytes:
    """Fill an admin row's option defaults into a forwarded body (request values win)."""
    try:
        body = json.loads(raw)
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        body["options"] = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        return json.dumps(body).encode()
    except (ValueError, RecursionError):  # nested deeper than the stack allows here: as it came
        return raw
