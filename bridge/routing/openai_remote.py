"""Ollama's native API served by an OpenAI-protocol engine (mlx_lm.server, vLLM, LM Studio,
llama.cpp's server, exo): requests converted to `/v1/*`, answers converted back to Ollama's shapes.

`/api/chat` and a templated `/api/generate` become `/v1/chat/completions`, a `raw` generate
`/v1/completions`, `/api/embed` and `/api/embeddings` `/v1/embeddings`. The remote is always asked
to stream (with `stream_options.include_usage`) so the bridge measures the durations Ollama reports
(time to the first token, then generation) for streamed and non-streamed answers alike; a
non-streamed answer is the stream merged. Knows no Flask: the caller opens the connection and
writes the response.

The requests are converted in openai_request, the remote's stream read within the bridge's limits
in openai_stream; this module turns what was read into Ollama's answers.
"""
from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import UpstreamError
from bridge.http.web import rfc3339
from bridge.routing.openai_request import Call
from bridge.routing.openai_stream import MAX_ANSWER


@dataclass
class Answer:
    """The remote stream read into Ollama's pieces, with the bridge's own timings."""

    call: Call
    opened_ns: int  # when the remote was asked
    first_ns: int | None = None
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tools: dict[int, dict[str, str]] = field(default_factory=dict)
    finish: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    held: int = 0  # bytes kept for the merge and the tool calls (at most MAX_ANSWER)

    def feed(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Take one remote chunk; returns the Ollama stream line it makes (None: nothing to
        show yet, e.g. a tool call's fragment or the usage)."""
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        choices = obj.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return None
        choice = choices[0]
        self.finish = choice.get("finish_reason") or self.finish
        if self.call.raw_text:
            text, think = choice.get("text") or "", ""
        else:
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            think = delta.get("reasoning_content") or delta.get("reasoning") or ""
            think = "" if self.call.hide_thinking else think
            for part in delta.get("tool_calls") or []:
                self._tool_part(part)
        if not (text or think):
            return None
        self.first_ns = self.first_ns or time.perf_counter_ns()
        if not self.call.stream:  # a stream passes its pieces on: only a merge keeps them
            self._hold(len(text) + len(think))
            self.content.append(text)
            self.thinking.append(think)
        return self.line(text, think)

    def _hold(self, size: int) -> None:
        self.held += size
        if self.held > MAX_ANSWER:
            raise UpstreamError(f"the OpenAI-protocol endpoint's answer is over {MAX_ANSWER} "
                                "bytes; ask for fewer tokens or stream it")

    def _tool_part(self, part: dict[str, Any]) -> None:
        self.first_ns = self.first_ns or time.perf_counter_ns()
        slot = self.tools.setdefault(int(part.get("index") or 0),
                                     {"id": "", "name": "", "arguments": ""})
        slot["id"] = slot["id"] or str(part.get("id") or "")  # the remote's, for the tool result
        fn = part.get("function") or {}
        name, arguments = fn.get("name") or "", fn.get("arguments") or ""
        self._hold(len(name) + len(arguments))
        slot["name"] += name
        slot["arguments"] += arguments

    def line(self, text: str, think: str = "",
             calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One Ollama stream object (chat: `message`; generate: `response`)."""
        out: dict[str, Any] = {"model": self.call.name, "created_at": rfc3339()}
        if self.call.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if think:
                message["thinking"] = think
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if think:
                out["thinking"] = think
            if calls:
                out["tool_calls"] = calls
        out["done"] = False
        return out

    def tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index in sorted(self.tools):
            slot = self.tools[index]
            try:
                arguments = json.loads(slot["arguments"] or "{}")
            except ValueError:  # the remote's model wrote broken JSON: keep what it wrote
                arguments = {"arguments": slot["arguments"]}
            call_id = slot["id"] or f"call_{secrets.token_hex(4)}"
            calls.append({"id": call_id, "function": {"index": index, "name": slot["name"],
                                                      "arguments": arguments}})
        return calls

    def final(self) -> dict[str, Any]:
        """The `done: true` object: done_reason, token counts from `usage`, bridge timings."""
        end = time.perf_counter_ns()
        first = self.first_ns or end
        out = self.line("")
        out.pop("thinking", None)
        prompt = int(self.usage.get("prompt_tokens") or 0)
        evals = int(self.usage.get("completion_tokens") or 0)
        out.update(done=True, done_reason="length" if self.finish == "length" else "stop",
                   total_duration=end - self.opened_ns, load_duration=0,
                   prompt_eval_count=prompt, prompt_eval_duration=first - self.opened_ns,
                   eval_count=evals, eval_duration=end - first)
        return out

    def merged(self) -> dict[str, Any]:
        """The whole answer as one object (`stream: false`)."""
        out = self.final()
        whole = self.line("".join(self.content), "".join(self.thinking), self.tool_calls())
        for key in ("message", "response", "thinking", "tool_calls"):  # placed as line() does
            if key in whole:
                out[key] = whole[key]
        return out


def embed_answer(call: Call, data: Any, opened_ns: int) -> dict[str, Any]:
    """`/v1/embeddings`' answer in /api/embed's shape (vectors L2-normalized, as Ollama's are) or
    in the legacy /api/embeddings' (one raw vector)."""
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UpstreamError("the OpenAI-protocol endpoint answered no embeddings")
    vectors = [r.get("embedding") for r in sorted(rows, key=lambda r: int(r.get("index") or 0))]
    if not all(isinstance(v, list) for v in vectors):
        raise UpstreamError("the OpenAI-protocol endpoint answered embeddings in base64; "
                            "only float vectors are converted")
    if call.kind == "embeddings":
        return {"embedding": vectors[0]}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return {"model": call.name, "embeddings": [_unit(v) for v in vectors],
            "total_duration": time.perf_counter_ns() - opened_ns, "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def show_body(name: str, remote_model: str, shown: str | None,
              listed: dict[str, Any] | None) -> dict[str, Any]:
    """/api/show for a model on an OpenAI-protocol endpoint: what `/v1/models` tells (its id,
    owner, creation time) with Ollama's `remote_model` / `remote_host` fields; no weights here."""
    created = listed.get("created") if listed else None
    modified = rfc3339(created) if isinstance(created, int | float) else rfc3339()
    return {
        "modelfile": (f"# {name} is served by the OpenAI-protocol endpoint {shown}\n"
                      f"FROM {remote_model}\n"),
        "parameters": "", "template": "",
        "details": {"parent_model": "", "format": "", "family": "", "families": None,
                    "parameter_size": "", "quantization_level": ""},
        "model_info": {"general.architecture": "", "remote.owned_by":
                       (listed or {}).get("owned_by", "")},
        "capabilities": ["completion", "tools"],
        "remote_model": remote_model, "remote_host": shown, "modified_at": modified,
    }
