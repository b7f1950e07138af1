"""Native Ollama response objects -> OpenAI JSON and SSE events (pure; no engine, no HTTP client).

Mirrors Ollama's openai/openai.go `ToChatCompletion`, `ToChunk`, `ToCompletion` and the
middleware's writers: `data: <json>\\n\\n` events ending with `data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from bridge.wire.names import ModelName

FINGERPRINT = "fp_ollama"
DONE_EVENT = "data: [DONE]\n\n"


def sse(obj: Any, event: str | None = None) -> str:
    """One server-sent event; with `event`, an `event:` line first (Anthropic, Responses)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def new_id(prefix: str) -> str:
    """Ollama's ids: `chatcmpl-N` / `cmpl-N` with N below 999."""
    return f"{prefix}-{random.randrange(999)}"


def usage(final: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(final.get("prompt_eval_count") or 0), int(final.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def finish_reason(done_reason: str | None, tool_calls: bool) -> str:
    """`stop` after tool calls becomes `tool_calls`; `length` stays (load/unload read as stop)."""
    reason = "length" if done_reason == "length" else "stop"
    return "tool_calls" if tool_calls and reason == "stop" else reason


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native tool calls (arguments an object) as OpenAI's (arguments a JSON string)."""
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function", {})
        out.append({"id": call.get("id", ""), "index": fn.get("index", i), "type": "function",
                    "function": {"name": fn.get("name", ""),
                                 "arguments": json.dumps(fn.get("arguments", {}),
                                                         ensure_ascii=False)}})
    return out


def error_object(message: str, kind: str = "api_error") -> dict[str, Any]:
    """OpenAI's error body, the one shape for /v1 answers, SSE error events and relayed streams.

    `kind` is the error's `openai_type` (bridge.errors); a failure mid-stream is an api_error.
    """
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def chat_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native logprobs as OpenAI's `choices[].logprobs.content` (top_logprobs always a list)."""
    def token(e: dict[str, Any]) -> dict[str, Any]:
        return {"token": e.get("token", ""), "logprob": e.get("logprob", 0.0),
                "bytes": e.get("bytes") or None}

    return [{**token(e), "top_logprobs": [token(t) for t in e.get("top_logprobs", [])]}
            for e in entries]


class LegacyLogprobs:
    """Native logprobs as /v1/completions' `{tokens, token_logprobs, top_logprobs,
    text_offset}`; offsets count characters from the start of the completion, across chunks."""

    def __init__(self, top: int) -> None:
        self.top, self.offset = top, 0

    def block(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = [str(e.get("token", "")) for e in entries]
        offsets = []
        for text in tokens:
            offsets.append(self.offset)
            self.offset += len(text)
        top = [_by_token(e.get("top_logprobs", [])) for e in entries]
        return {"tokens": tokens, "token_logprobs": [e.get("logprob", 0.0) for e in entries],
                "top_logprobs": top if self.top > 0 else None, "text_offset": offsets}


def _by_token(alternatives: list[dict[str, Any]]) -> dict[str, float]:
    """{token: logprob}; two tokens that read the same (partial UTF-8 bytes: U+FFFD) keep the
    more likely one (the list is sorted, most likely first)."""
    out: dict[str, float] = {}
    for alt in alternatives:
        out.setdefault(str(alt.get("token", "")), alt.get("logprob", 0.0))
    return out


class ChatWriter:
    """One /v1/chat/completions response, from the native chat objects of one generation.

    `max_calls` keeps only the first tool calls (`parallel_tool_calls: false`)."""

    def __init__(self, model: str, include_usage: bool = False, logprobs: bool = False,
                 max_calls: int | None = None) -> None:
        self.model, self.include_usage, self.logprobs = model, include_usage, logprobs
        self.id, self.created = new_id("chatcmpl"), int(time.time())
        self.max_calls, self.calls = max_calls, 0
        self.tool_calls = False
        self.role_sent = False

    def completion(self, final: dict[str, Any]) -> dict[str, Any]:
        """The non-streamed answer from the merged native final object."""
        msg = final.get("message", {})
        message: dict[str, Any] = {"role": "assistant", "content": msg.get("content", "")}
        if msg.get("thinking"):
            message["reasoning"] = msg["thinking"]
        calls = self._allowed(msg.get("tool_calls") or [])
        if calls:
            message["tool_calls"] = openai_tool_calls(calls)
        reason = finish_reason(final.get("done_reason"), bool(calls))
        choice = {"index": 0, "message": message, "finish_reason": reason}
        if self.logprobs:
            choice["logprobs"] = {"content": chat_logprobs(final.get("logprobs", [])),
                                  "refusal": None}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "system_fingerprint": FINGERPRINT,
                "choices": [choice],
                "usage": usage(final)}

    def events(self, lines: Iterable[dict[str, Any]]) -> Iterator[str]:
        """SSE events for the native stream; a native error line becomes an error event."""
        for line in lines:
            if "error" in line:
                yield sse(error_object(str(line["error"])))
                break
            for chunk in self.chunks(line):
                yield sse(chunk)
        yield DONE_EVENT

    def chunks(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        msg = line.get("message", {})
        if line.get("done"):
            out = [self._chunk({} if self.role_sent else self._delta(content=""),
                               finish_reason(line.get("done_reason"), self.tool_calls))]
            if self.include_usage:
                out.append({**self._base(), "choices": [], "usage": usage(line)})
            return out
        out = []
        if msg.get("thinking"):  # reasoning and content never share a chunk
            out.append(self._chunk(self._delta(reasoning=msg["thinking"])))
        calls = self._allowed(msg.get("tool_calls") or [])
        if msg.get("content") or calls:
            delta = self._delta(content=msg.get("content", ""))
            if calls:
                self.tool_calls = True
                delta["tool_calls"] = openai_tool_calls(calls)
            out.append(self._chunk(delta))
        if self.logprobs and line.get("logprobs"):
            if not out:  # tokens whose text was held back or cut (a stop string)
                out.append(self._chunk(self._delta(content="")))
            out[-1]["choices"][0]["logprobs"] = {"content": chat_logprobs(line["logprobs"]),
                                                 "refusal": None}
        return out

    def _allowed(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.max_calls is not None:
            calls = calls[: max(self.max_calls - self.calls, 0)]
        self.calls += len(calls)
        return calls

    def _delta(self, **fields: Any) -> dict[str, Any]:
        delta = {} if self.role_sent else {"role": "assistant"}
        self.role_sent = True
        return {**delta, **fields}

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": FINGERPRINT}

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {**self._base(), "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}


class CompletionWriter:
    """One /v1/completions response, from the native generate objects of one generation."""

    def __init__(self, model: str, include_usage: bool = False,
                 logprobs: int | None = None) -> None:
        self.model, self.include_usage = model, include_usage
        self.id, self.created = new_id("cmpl"), int(time.time())
        # The request's `logprobs` (alternatives per token); None: not asked, `logprobs: null`.
        self.legacy = LegacyLogprobs(logprobs) if logprobs is not None else None

    def _logprobs(self, line: dict[str, Any]) -> dict[str, Any] | None:
        return self.legacy.block(line.get("logprobs", [])) if self.legacy else None

    def completion(self, final: dict[str, Any]) -> dict[str, Any]:
        choice = {"text": final.get("response", ""), "index": 0,
                  "logprobs": self._logprobs(final),
                  "finish_reason": finish_reason(final.get("done_reason"), False)}
        return {**self._base(), "choices": [choice], "usage": usage(final)}

    def events(self, lines: Iterable[dict[str, Any]]) -> Iterator[str]:
        for line in lines:
            if "error" in line:
                yield sse(error_object(str(line["error"])))
                break
            done = bool(line.get("done"))
            reason = finish_reason(line.get("done_reason"), False) if done else None
            chunk = {**self._base(), "choices": [{"text": line.get("response", ""), "index": 0,
                                                   "logprobs": self._logprobs(line),
                                                   "finish_reason": reason}]}
            if self.include_usage:  # Ollama sends a zero usage on every chunk, then the total
                chunk["usage"] = usage({})
            yield sse(chunk)
            if done and self.include_usage:
                yield sse({**self._base(), "choices": [], "usage": usage(line)})
        yield DONE_EVENT

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": FINGERPRINT}


def model_object(entry: dict[str, Any]) -> dict[str, Any]:
    """An /api/tags entry as an OpenAI model object (owned_by: the namespace)."""
    name = str(entry.get("model") or entry.get("name") or "")
    parsed = ModelName.try_parse(name)
    owner = parsed.namespace if parsed else "library"
    return {"id": name, "object": "model", "created": unix_time(entry.get("modified_at")),
            "owned_by": owner}


def unix_time(value: Any) -> int:
    """RFC3339 (up to 9 fractional digits, `Z`) as Unix seconds; 0 when unreadable.

    >>> unix_time("2024-06-01T12:00:00.123456789Z")
    1717243200
    """
    if not isinstance(value, str) or not value:
        return 0
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most 6 fractional digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[:min(digits, 6)] + rest[digits:]
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0
