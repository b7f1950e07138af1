"""Native chat objects -> Anthropic Messages JSON and SSE events (pure; no engine, no HTTP client).

Mirrors Ollama's anthropic/anthropic.go `ToMessagesResponse` and `StreamConverter` (spec §3a),
plus what Ollama leaves out: `stop_sequence` (the engine reports which stop string matched), a
`ping` after `message_start`, and an `error` event when a generation fails after streaming began.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from bridge.wire.openai_out import sse

# Anthropic's error types by HTTP status (Ollama's anthropic.NewError, plus 413).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """
    >>> error_type(404), error_type(409), error_type(502)
    ('not_found_error', 'invalid_request_error', 'api_error')
    """
    return ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def anthropic_error(status: int, message: str, request_id: str = "",
                    details: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"[, "details"]}, "request_id"}`."""
    out: dict[str, Any] = {"type": "error",
                           "error": {"type": error_type(status), "message": message}}
    if details:
        out["error"]["details"] = details
    if request_id:
        out["request_id"] = anthropic_request_id(request_id)
    return out


def anthropic_request_id(request_id: str) -> str:
    """Anthropic's `req_<24 hex>` for the bridge's request id (its hex digits zero-padded, so
    the log's `request_id=` is still found in it; another id is hashed).

    >>> anthropic_request_id("58d9422f3846473d")
    'req_0000000058d9422f3846473d'
    """
    digits = request_id.lower()
    if not (0 < len(digits) <= 24 and all(c in "0123456789abcdef" for c in digits)):
        digits = hashlib.sha256(request_id.encode()).hexdigest()
    return "req_" + digits[-24:].rjust(24, "0")


def stop_reason(done_reason: str | None, tool_calls: bool, stop_sequence: str) -> str:
    """
    >>> stop_reason("stop", False, ""), stop_reason("stop", False, "###")
    ('end_turn', 'stop_sequence')
    >>> stop_reason("length", False, "")
    'max_tokens'
    >>> stop_reason("stop", True, "")
    'tool_use'
    """
    if tool_calls:
        return "tool_use"
    if done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence else "end_turn"


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", {})
    return {"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name", ""),
            "input": fn.get("arguments") or {}}


class MessagesWriter:
    """One /v1/messages response from the native chat objects of one generation.

    The final native object carries `stop_sequence` (added by the blueprint from the engine's
    Done). `max_calls` keeps only the first tool calls (`disable_parallel_tool_use`).
    """

    def __init__(self, model: str, input_estimate: int = 0, show_thinking: bool = True,
                 max_calls: int | None = None, context: dict[str, Any] | None = None) -> None:
        self.model, self.input_estimate = model, input_estimate
        self.context = context  # context_management.applied_edits, reported when asked for
        self.show_thinking, self.max_calls = show_thinking, max_calls
        self.id = "msg_" + secrets.token_hex(12)
        self.index = -1  # the content block being written
        self.open: str | None = None  # its type while it is open
        self.calls = 0

    def message(self, final: dict[str, Any]) -> dict[str, Any]:
        """The non-streamed Message from the merged native final object."""
        msg = final.get("message") or {}
        content: list[dict[str, Any]] = []
        if msg.get("thinking"):
            content.append({"type": "thinking", "signature": "",
                            "thinking": msg["thinking"] if self.show_thinking else ""})
        if msg.get("content"):
            content.append({"type": "text", "text": msg["content"]})
        calls = self._allowed(msg.get("tool_calls") or [])
        content += [tool_use_block(c) for c in calls]
        if not content:
            content.append({"type": "text", "text": ""})
        stop = str(final.get("stop_sequence") or "")
        reason = stop_reason(final.get("done_reason"), bool(calls), stop)
        return {**self._head(), "content": content, "stop_reason": reason,
                "stop_sequence": stop if reason == "stop_sequence" else None, "usage": usage(final),
                **self._context()}

    def events(self, lines: Iterable[dict[str, Any]]) -> Iterator[str]:
        """The SSE stream: message_start, ping, content blocks, message_delta, message_stop."""
        yield sse({"type": "message_start", "message": {
            **self._head(), "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0}}}, "message_start")
        yield sse({"type": "ping"}, "ping")
        for line in lines:
            if "error" in line:
                yield sse(anthropic_error(500, str(line["error"])), "error")
                return
            if line.get("done"):
                yield from self._finish(line)
                return
            yield from self._delta(line.get("message") or {})

    def _delta(self, msg: dict[str, Any]) -> Iterator[str]:
        if msg.get("thinking"):
            yield from self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            if self.show_thinking:
                yield self._block_delta({"type": "thinking_delta", "thinking": msg["thinking"]})
        if msg.get("content"):
            yield from self._open("text", {"type": "text", "text": ""})
            yield self._block_delta({"type": "text_delta", "text": msg["content"]})
        for call in self._allowed(msg.get("tool_calls") or []):  # calls arrive whole
            block = tool_use_block(call)
            yield from self._open("tool_use", {**block, "input": {}})
            partial = json.dumps(block["input"], ensure_ascii=False)
            yield self._block_delta({"type": "input_json_delta", "partial_json": partial})
            yield from self._close()

    def _finish(self, final: dict[str, Any]) -> Iterator[str]:
        if self.index < 0:  # nothing was written: one empty text block, as in message()
            yield from self._open("text", {"type": "text", "text": ""})
        yield from self._close()
        stop = str(final.get("stop_sequence") or "")
        reason = stop_reason(final.get("done_reason"), self.calls > 0, stop)
        yield sse({"type": "message_delta",
                   "delta": {"stop_reason": reason,
                             "stop_sequence": stop if reason == "stop_sequence" else None},
                   "usage": usage(final), **self._context()}, "message_delta")
        yield sse({"type": "message_stop"}, "message_stop")

    def _open(self, kind: str, block: dict[str, Any]) -> Iterator[str]:
        if self.open == kind:
            return
        yield from self._close()
        self.index += 1
        self.open = kind
        yield sse({"type": "content_block_start", "index": self.index, "content_block": block},
                  "content_block_start")

    def _close(self) -> Iterator[str]:
        if self.open is not None:
            self.open = None
            yield sse({"type": "content_block_stop", "index": self.index}, "content_block_stop")

    def _block_delta(self, delta: dict[str, Any]) -> str:
        return sse({"type": "content_block_delta", "index": self.index, "delta": delta},
                   "content_block_delta")

    def _allowed(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.max_calls is not None:
            calls = calls[: max(self.max_calls - self.calls, 0)]
        self.calls += len(calls)
        return calls

    def _context(self) -> dict[str, Any]:
        return {"context_management": self.context} if self.context is not None else {}

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model}


def usage(final: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": int(final.get("prompt_eval_count") or 0),
            "output_tokens": int(final.get("eval_count") or 0)}


def count_tokens_body(count: int) -> dict[str, int]:
    return {"input_tokens": count}
