"""Reading an OpenAI-protocol remote's answer safely: its SSE stream within the bridge's limits,
a whole JSON answer as one stream chunk, and its failures as the bridge's errors.

A remote past the limits (a line over MAX_LINE, an answer over MAX_ANSWER, no complete event
for the idle time) or with an answer in another shape is cut with a 502 (504 when idle): an
endless or huge answer cannot fill the bridge's memory, nor a broken one become a 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from bridge.errors import BadRequest, BridgeError, ModelNotFound, UpstreamError

T = TypeVar("T")


def remote_error(status: int, text: str, name: str, shown: str | None) -> BridgeError:
    """A remote's non-2xx answer as the bridge's error (404: the model is not there)."""
    message = _error_text(text)
    where = f"OpenAI-protocol endpoint {shown}"
    if status == 404:
        return ModelNotFound(name, f" at the {where}: {message}")
    if status >= 500:
        return UpstreamError(f"{where} answered {status}: {message}")
    if status == 400:
        return BadRequest(f"{where}: {message}")
    return BridgeError(f"{where} answered {status}: {message}", status)


def _error_text(text: str) -> str:
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip()[:300] or "no error message"
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:300] if error else text.strip()[:300]


def checked(read: Callable[..., T], *args: Any) -> T:
    """Read a remote answer's JSON: a shape other than OpenAI's (a list where an object belongs,
    a number for a text) is the remote's fault, a 502 saying so, not the bridge's 500."""
    try:
        return read(*args)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:
        raise UpstreamError(f"the OpenAI-protocol endpoint answered an unexpected shape: "
                            f"{type(exc).__name__}: {exc}"[:300]) from None


# What the bridge holds from a remote at once: one SSE line, and a whole answer it merges (a
# non-streamed chat, tool-call arguments). A remote past them is cut with a 502: an endless or
# huge answer cannot fill the bridge's memory.
MAX_LINE = 8 << 20
MAX_ANSWER = 16 << 20


def sse_objects(chunks: Iterator[bytes], idle: float | None = None,
                max_line: int = MAX_LINE) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE stream's `data:` lines, until `[DONE]` (comments skipped).

    The remote's fault, as an UpstreamError: a line over `max_line` bytes, a `data:` line that is
    not JSON, no complete line for `idle` seconds while bytes trickle in (504; the read timeout
    only sees silence), and an end before `[DONE]` with no `finish_reason` (a cut answer).
    """
    buf = bytearray()
    last = time.monotonic()
    finished = False
    for chunk in chunks:
        buf += chunk
        if b"\n" not in chunk:
            if len(buf) > max_line:
                raise UpstreamError(f"the OpenAI-protocol endpoint sent a line over {max_line} "
                                    "bytes")
            if idle is not None and time.monotonic() - last > idle:
                raise UpstreamError(f"the OpenAI-protocol endpoint sent no complete event for "
                                    f"{idle:g} s", status=504)
            continue
        *lines, rest = bytes(buf).split(b"\n")
        buf = bytearray(rest)
        last = time.monotonic()
        for line in lines:
            if len(line) > max_line:
                raise UpstreamError(f"the OpenAI-protocol endpoint sent a line over {max_line} "
                                    "bytes")
            obj = _event(line.strip())
            if obj is _DONE:
                return
            if obj is not None:
                finished = finished or _finished(obj)
                yield obj
    if not finished:
        raise UpstreamError("the OpenAI-protocol endpoint's stream ended before the answer was "
                            "complete (no finish_reason, no [DONE])")


_DONE: dict[str, Any] = {}


def _event(line: bytes) -> dict[str, Any] | None:
    """One SSE line's object: _DONE for `[DONE]`, None for what carries none."""
    if not line.startswith(b"data:"):
        return None  # `: keepalive`, `event:`, blank separators
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    try:
        obj = json.loads(data)
    except ValueError:
        shown = data[:80].decode("utf-8", "replace")
        raise UpstreamError(f"the OpenAI-protocol endpoint sent an event that is not JSON: "
                            f"{shown!r}") from None
    if not isinstance(obj, dict):
        return None
    if obj.get("error"):
        raise UpstreamError(f"remote engine failed: {_error_text(data.decode())}")
    return obj


def _finished(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason")
                                             for c in choices)


def as_chunk(data: Any) -> dict[str, Any]:
    """A whole (non-streamed) completion as one stream chunk, for a remote that answers JSON
    although it was asked to stream: `message` becomes the `delta`."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamError("the OpenAI-protocol endpoint answered no completion (no `choices`)")
    choices = [{**c, "delta": _as_delta(c.get("message") or {})} for c in data["choices"]]
    return {**data, "choices": choices}


def _as_delta(message: dict[str, Any]) -> dict[str, Any]:
    # a whole message's tool calls carry no `index` (a stream's fragments do): number them
    calls = [{**c, "index": i} for i, c in enumerate(message.get("tool_calls") or [])]
    return {**message, "tool_calls": calls}
