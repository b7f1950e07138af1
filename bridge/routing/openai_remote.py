"""Ollama's native API served by an OpenAI-protocol engine (mlx_lm.server, vLLM, LM Studio,
llama.cpp's server, exo): requests converted to `/v1/*`, answers converted back to Ollama's shapes.

`/api/chat` and a templated `/api/generate` become `/v1/chat/completions`, a `raw` generate
`/v1/completions`, `/api/embed` and `/api/embeddings` `/v1/embeddings`. The remote is always asked
to stream (with `stream_options.include_usage`) so the bridge measures the durations Ollama reports
(time to the first token, then generation) for streamed and non-streamed answers alike; a
non-streamed answer is the stream merged. Knows no Flask: the caller opens the connection and
writes the response.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bridge.errors import BadRequest, BridgeError, ModelNotFound, Unsupported, UpstreamError
from bridge.http.web import rfc3339

# Ollama options with an OpenAI field of the same meaning. top_k, min_p and repeat_penalty are
# not OpenAI's but mlx_lm.server, vLLM and llama.cpp's server take them; the rest of Ollama's
# options (num_ctx, num_gpu, mirostat, ...) configure the remote engine itself and are not sent.
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                 "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repetition_penalty"}
CONVERTED = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show")
T = TypeVar("T")
_IMAGE_TYPES = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lG": "image/gif",
                "UklG": "image/webp"}


@dataclass
class Call:
    """One converted request: the remote path and body, and how to read the answer back."""

    kind: str  # "chat" | "generate" | "embed" | "embeddings"
    path: str
    body: dict[str, Any]
    name: str  # the model name the client asked for (answers carry it, as Ollama's do)
    stream: bool = False
    raw_text: bool = False  # /v1/completions: choices carry `text`, not `delta`
    hide_thinking: bool = False  # `think: false`: a remote that thinks anyway is not shown


def convert(path: str, raw: bytes, name: str, remote_model: str,
            defaults: dict[str, Any]) -> Call:
    """The `/v1/*` call for a native request (already validated by its view)."""
    body = json.loads(raw)
    if body.get("logprobs") or body.get("top_logprobs"):
        raise Unsupported(f"logprobs are not returned for model '{name}': its engine speaks the "
                          "OpenAI protocol and the bridge does not convert them")
    if path == "/api/chat":
        chat = _sampling(body, defaults) | {"messages": messages(body.get("messages") or [])}
        _tools_and_format(body, chat)
        return _streamed(Call("chat", "/v1/chat/completions", chat, name,
                              body.get("stream", True) is not False), remote_model)
    if path == "/api/generate":
        return _generate(body, name, remote_model, defaults)
    if path in ("/api/embed", "/api/embeddings"):
        legacy = path == "/api/embeddings"
        data = {"model": remote_model, "input": body.get("prompt" if legacy else "input"),
                "encoding_format": "float"}
        if body.get("dimensions"):
            data["dimensions"] = body["dimensions"]
        return Call("embeddings" if legacy else "embed", "/v1/embeddings", data, name)
    raise Unsupported(f"{path} is not available for model '{name}': its engine speaks the OpenAI "
                      "protocol, which serves chat, generate and embeddings only")


def _generate(body: dict[str, Any], name: str, remote_model: str,
              defaults: dict[str, Any]) -> Call:
    for unsupported in ("template", "context", *(() if body.get("raw") else ("suffix",))):
        if body.get(unsupported):
            raise Unsupported(f"'{unsupported}' cannot be sent to model '{name}': its engine "
                              "speaks the OpenAI protocol and applies its own chat template")
    stream = body.get("stream", True) is not False
    data = _sampling(body, defaults)
    if body.get("raw"):  # the prompt as it is: no template, which is what /v1/completions does
        data["prompt"] = body.get("prompt") or ""
        if body.get("suffix"):
            data["suffix"] = body["suffix"]
        return _streamed(Call("generate", "/v1/completions", data, name, stream, True),
                         remote_model)
    # Ollama applies the model's template to a plain prompt: that is a one-turn chat
    turn: dict[str, Any] = {"role": "user", "content": body.get("prompt") or "",
                            "images": body.get("images")}
    system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    data["messages"] = messages([*system, turn])
    _tools_and_format(body, data)
    return _streamed(Call("generate", "/v1/chat/completions", data, name, stream), remote_model)


def _streamed(call: Call, remote_model: str) -> Call:
    call.hide_thinking = call.body.get("chat_template_kwargs") == {"enable_thinking": False}
    call.body = {"model": remote_model, **call.body, "stream": True,
                 "stream_options": {"include_usage": True}}
    return call


def _sampling(body: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Ollama's options (an admin row's defaults under the request's) as OpenAI fields."""
    given = body.get("options") if isinstance(body.get("options"), dict) else {}
    options = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    out = {OPTION_FIELDS[k]: v for k, v in options.items() if k in OPTION_FIELDS}
    limit = options.get("num_predict")
    if isinstance(limit, int) and limit >= 0:  # -1 and -2 mean "no limit": the remote's default
        out["max_tokens"] = limit
    think = body.get("think")
    if isinstance(think, str):  # "low" | "medium" | "high"
        out["reasoning_effort"] = think
    elif isinstance(think, bool):  # no OpenAI field: the template switch mlx_lm.server and vLLM
        out["chat_template_kwargs"] = {"enable_thinking": think}  # take (Qwen3-style templates)
    return out


def _tools_and_format(body: dict[str, Any], data: dict[str, Any]) -> None:
    if body.get("tools"):
        data["tools"] = body["tools"]  # Ollama's tool shape is OpenAI's
    fmt = body.get("format")
    if fmt == "json":
        data["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        data["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "response", "schema": fmt}}


def messages(native: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI's: images as data URLs, tool calls with ids and string
    arguments, a tool result tied to the call it answers (by `tool_name`, else in order)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, function name) of calls not answered yet
    for i, m in enumerate(native):
        role, text = m.get("role"), m.get("content") or ""
        msg: dict[str, Any] = {"role": role, "content": _content(text, m.get("images"))}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = [_call_out(call, f"call_{i}_{j}")
                                 for j, call in enumerate(m["tool_calls"])]
            pending = [(c["id"], c["function"]["name"]) for c in msg["tool_calls"]]
        elif role == "tool":
            msg["tool_call_id"] = (m.get("tool_call_id")
                                   or _answered(pending, m.get("tool_name"), i))
        out.append(msg)
    return out


def _content(text: str, images: list[str] | None) -> Any:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        mime = next((t for p, t in _IMAGE_TYPES.items() if image.startswith(p)), "image/png")
        parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}})
    return parts


def _call_out(call: dict[str, Any], default_id: str) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {"id": call.get("id") or default_id, "type": "function",
            "function": {"name": fn.get("name", ""),
                         "arguments": json.dumps(fn.get("arguments") or {})}}


def _answered(pending: list[tuple[str, str]], tool_name: str | None, index: int) -> str:
    for k, (_, fn) in enumerate(pending):
        if tool_name is None or fn == tool_name:
            return pending.pop(k)[0]
    return f"call_result_{index}"  # a result with no call before it: its own id


# ---- answers -----------------------------------------------------------------------------------

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
