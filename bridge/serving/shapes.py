"""How /api/generate and /api/chat lay out a local generation's chunks and final object."""

from __future__ import annotations

import time
from typing import Any

from bridge.engine import Done
from bridge.engine.jobs import TokenLogprob
from bridge.http.web import rfc3339
from bridge.serving.output import Delta
from bridge.wire.schemas import Common, GenerateRequest


class Shape:
    """How one endpoint lays out its chunks and final object."""

    def __init__(self, req: Common) -> None:
        self.req = req

    def base(self) -> dict[str, Any]:
        return {"model": self.req.model, "created_at": rfc3339()}

    def metrics(self, done: Done, started: int) -> dict[str, Any]:
        values = {
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": done.load_duration,
            "prompt_eval_count": done.prompt_eval_count,
            "prompt_eval_duration": done.prompt_eval_duration,
            "eval_count": done.eval_count,
            "eval_duration": done.eval_duration,
        }
        return {k: v for k, v in values.items() if v}  # Ollama's omitempty

    def chunk(self, delta: Delta) -> dict[str, Any]:
        raise NotImplementedError

    def logprobs(self, delta: Delta | None) -> dict[str, Any]:
        """Ollama's top-level `logprobs` (omitempty): the tokens behind this object."""
        return {"logprobs": logprob_objects(delta.logprobs)} if delta and delta.logprobs else {}

    def final(self, done: Done, started: int, total: Delta | None = None) -> dict[str, Any]:
        raise NotImplementedError


class GenerateShape(Shape):
    req: GenerateRequest

    def text(self, delta: Delta) -> dict[str, Any]:
        out = {"response": delta.content}
        if delta.thinking:
            out["thinking"] = delta.thinking
        return out

    def chunk(self, delta: Delta) -> dict[str, Any]:
        return {**self.base(), **self.text(delta), **self.logprobs(delta), "done": False}

    def final(self, done: Done, started: int, total: Delta | None = None) -> dict[str, Any]:
        out = {**self.base(), **self.text(total or Delta()), **self.logprobs(total),
               "done": True, "done_reason": done.done_reason}
        if not self.req.raw:
            out["context"] = done.context
        return {**out, **self.metrics(done, started)}


class ChatShape(Shape):
    def message(self, delta: Delta) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": delta.content}
        if delta.thinking:
            msg["thinking"] = delta.thinking
        if delta.tool_calls:
            msg["tool_calls"] = delta.tool_calls
        return msg

    def chunk(self, delta: Delta) -> dict[str, Any]:
        return {**self.base(), "message": self.message(delta), **self.logprobs(delta),
                "done": False}

    def final(self, done: Done, started: int, total: Delta | None = None) -> dict[str, Any]:
        # Ollama keeps done_reason "stop" after tool calls (/v1 turns it into "tool_calls").
        return {**self.base(), "message": self.message(total or Delta()), **self.logprobs(total),
                "done": True, "done_reason": done.done_reason, **self.metrics(done, started)}


def logprob_objects(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Ollama's `[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]`
    (`bytes` and `top_logprobs` omitempty, as api.Logprob)."""
    return [{**_token(e), **({"top_logprobs": [_token(t) for t in e.top]} if e.top else {})}
            for e in entries]


def _token(entry: TokenLogprob) -> dict[str, Any]:
    out: dict[str, Any] = {"token": entry.token, "logprob": entry.logprob}
    if entry.bytes:
        out["bytes"] = entry.bytes
    return out
