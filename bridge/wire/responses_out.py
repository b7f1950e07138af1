"""Native chat objects -> OpenAI Responses JSON and SSE events (pure; no engine, no HTTP client).

Mirrors Ollama's openai/responses.go `ToResponse` and `ResponsesStreamConverter` (spec §3b):
`event: <type>` + `data:` frames, each payload with a 0-based `sequence_number`, no `[DONE]`.
As Ollama, a generation cut by the token limit is `status: "completed"` too (OpenAI says
`incomplete`; the openai SDK's `responses.stream(...).get_final_response()` needs
`response.completed`, so a cut answer reads as one there, as against Ollama). Where Ollama is
looser the bridge follows OpenAI: text is kept beside tool calls, and a failure after streaming
began is a `response.failed` event.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from bridge.wire.openai_out import chat_logprobs, sse


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage(final: dict[str, Any]) -> dict[str, Any]:
    prompt, output = int(final.get("prompt_eval_count") or 0), int(final.get("eval_count") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output}


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


class ResponsesWriter:
    """One /v1/responses response from the native chat objects of one generation.

    `echo` holds the request fields the response object repeats (bridge.wire.responses_in);
    `max_calls` keeps only the first tool calls (parallel_tool_calls false, max_tool_calls).
    `logprobs`: the output text carries the native logprobs (include
    message.output_text.logprobs); as in /v1/chat/completions the reasoning's tokens are listed
    too, with the text that follows them.
    """

    def __init__(self, model: str, echo: dict[str, Any], max_calls: int | None = None,
                 encrypted_reasoning: bool = False, logprobs: bool = False) -> None:
        self.model, self.echo, self.max_calls = model, echo, max_calls
        self.encrypted_reasoning, self.logprobs = encrypted_reasoning, logprobs
        self.scored: list[dict[str, Any]] = []  # streamed logprobs not yet sent with a delta
        self.id, self.created_at = new_id("resp"), int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items, in order
        self.item: dict[str, Any] | None = None  # the reasoning or message item being streamed
        self.calls = 0

    # ---- the response object -------------------------------------------------------------

    def response(self, final: dict[str, Any]) -> dict[str, Any]:
        """The non-streamed response from the merged native final object."""
        msg = final.get("message") or {}
        output = []
        if msg.get("thinking"):
            output.append(self._reasoning(new_id("rs"), msg["thinking"]))
        calls = self._allowed(msg.get("tool_calls") or [])
        if msg.get("content") or not calls:
            scored = chat_logprobs(final.get("logprobs") or []) if self.logprobs else []
            # completed also when cut by the token limit, as Ollama (module docstring)
            output.append(self._message(new_id("msg"), msg.get("content", ""), "completed",
                                        scored))
        output += [self._call(c, "completed") for c in calls]
        return self._body(final, output)

    def _body(self, final: dict[str, Any] | None, output: list[dict[str, Any]],
              error: str | None = None) -> dict[str, Any]:
        """The response object; `final` None while in progress."""
        status = "in_progress" if final is None else "completed"  # a cut answer too (Ollama)
        if error is not None:
            status = "failed"
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "completed_at": int(time.time()) if status == "completed" else None,
                "status": status,
                "error": {"code": "server_error", "message": error} if error is not None else None,
                "incomplete_details": None, "model": self.model, "output": output,
                "previous_response_id": None, "presence_penalty": 0, "frequency_penalty": 0,
                "top_logprobs": 0, "store": False, "background": False, "service_tier": "default",
                **self.echo, "usage": usage(final) if final is not None else None}

    def _reasoning(self, item_id: str, text: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": item_id, "type": "reasoning",
                                "summary": [{"type": "summary_text", "text": text}]}
        if self.encrypted_reasoning:  # Ollama's convention: the plain text, read back as thinking
            item["encrypted_content"] = text
        return item

    @staticmethod
    def _message(item_id: str, text: str, status: str,
                 logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"id": item_id, "type": "message", "status": status, "role": "assistant",
                "content": [text_part(text, logprobs)] if status != "in_progress" else []}

    @staticmethod
    def _call(call: dict[str, Any], status: str) -> dict[str, Any]:
        fn = call.get("function", {})
        return {"id": new_id("fc"), "type": "function_call", "status": status,
                "call_id": call.get("id") or new_id("call"), "name": fn.get("name", ""),
                "arguments": json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
                if status == "completed" else ""}

    def _allowed(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.max_calls is not None:
            calls = calls[: max(self.max_calls - self.calls, 0)]
        self.calls += len(calls)
        return calls

    # ---- the event stream ----------------------------------------------------------------

    def events(self, lines: Iterable[dict[str, Any]]) -> Iterator[str]:
        yield self._event("response.created", response=self._body(None, []))
        yield self._event("response.in_progress", response=self._body(None, []))
        for line in lines:
            if "error" in line:
                yield from self._close()
                failed = self._body(None, self.output, str(line["error"]))
                yield self._event("response.failed", response=failed)
                return
            if line.get("done"):
                yield from self._finish(line)
                return
            msg = line.get("message") or {}
            if self.logprobs:
                self.scored += chat_logprobs(line.get("logprobs") or [])
            if msg.get("thinking"):
                yield from self._thinking(msg["thinking"])
            if msg.get("content"):
                yield from self._text(msg["content"])
            for call in self._allowed(msg.get("tool_calls") or []):
                yield from self._close()
                yield from self._function_call(call)

    def _finish(self, final: dict[str, Any]) -> Iterator[str]:
        if not self.output and self.item is None:  # nothing was said: one empty message
            yield from self._text("")
        yield from self._close()
        yield self._event("response.completed", response=self._body(final, self.output))

    def _thinking(self, delta: str) -> Iterator[str]:
        if self.item is None or self.item["type"] != "reasoning":
            yield from self._close()
            self.item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "text": ""}
            yield self._event("response.output_item.added", output_index=len(self.output),
                              item={"id": self.item["id"], "type": "reasoning", "summary": []})
            yield self._event("response.reasoning_summary_part.added",
                              **self._where(summary_index=0),
                              part={"type": "summary_text", "text": ""})
        self.item["text"] += delta
        yield self._event("response.reasoning_summary_text.delta",
                          **self._where(summary_index=0), delta=delta)

    def _text(self, delta: str) -> Iterator[str]:
        if self.item is None or self.item["type"] != "message":
            yield from self._close()
            self.item = {"id": new_id("msg"), "type": "message", "text": "", "logprobs": []}
            yield self._event("response.output_item.added", output_index=len(self.output),
                              item=self._message(self.item["id"], "", "in_progress"))
            yield self._event("response.content_part.added", **self._where(content_index=0),
                              part=text_part(""))
        self.item["text"] += delta
        if delta:
            scored, self.scored = self.scored, []
            self.item["logprobs"] += scored
            yield self._event("response.output_text.delta", **self._where(content_index=0),
                              delta=delta, logprobs=scored)

    def _close(self) -> Iterator[str]:
        """Finish the reasoning or message item being streamed."""
        item, self.item = self.item, None
        if item is None:
            return
        text, index = item["text"], len(self.output)
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            done = self._reasoning(item["id"], text)
            yield self._event("response.reasoning_summary_text.done", **where, summary_index=0,
                              text=text)
            yield self._event("response.reasoning_summary_part.done", **where, summary_index=0,
                              part={"type": "summary_text", "text": text})
        else:
            if self.scored:  # tokens whose text never came out (a cut character, a stop string):
                yield self._event("response.output_text.delta", **where, content_index=0,
                                  delta="", logprobs=self.scored)  # every token in some delta
            scored, self.scored = item["logprobs"] + self.scored, []
            done = self._message(item["id"], text, "completed", scored)
            yield self._event("response.output_text.done", **where, content_index=0, text=text,
                              logprobs=scored)
            yield self._event("response.content_part.done", **where, content_index=0,
                              part=text_part(text, scored))
        self.output.append(done)
        yield self._event("response.output_item.done", output_index=index, item=done)

    def _function_call(self, call: dict[str, Any]) -> Iterator[str]:
        """A call arrives whole: added, its arguments in one delta, done."""
        done = self._call(call, "completed")
        index = len(self.output)
        where = {"item_id": done["id"], "output_index": index}
        yield self._event("response.output_item.added", output_index=index,
                          item={**done, "status": "in_progress", "arguments": ""})
        yield self._event("response.function_call_arguments.delta", **where,
                          delta=done["arguments"])
        yield self._event("response.function_call_arguments.done", **where, name=done["name"],
                          arguments=done["arguments"])
        self.output.append(done)
        yield self._event("response.output_item.done", output_index=index, item=done)

    def _where(self, **extra: int) -> dict[str, Any]:
        assert self.item is not None
        return {"item_id": self.item["id"], "output_index": len(self.output), **extra}

    def _event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(payload, kind)

