"""Ollama's native requests as OpenAI-protocol calls (`/v1/*`) for a remote engine.

`/api/chat` and a templated `/api/generate` become `/v1/chat/completions`, a `raw` generate
`/v1/completions`, `/api/embed` and `/api/embeddings` `/v1/embeddings`. Chat and generate are
always asked to stream (with `stream_options.include_usage`) so the bridge measures the durations
Ollama reports; the answers are read back by openai_remote. Knows no Flask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.errors import Unsupported

# Ollama options with an OpenAI field of the same meaning. top_k, min_p and repeat_penalty are
# not OpenAI's but mlx_lm.server, vLLM and llama.cpp's server take them; the rest of Ollama's
# options (num_ctx, num_gpu, mirostat, ...) configure the remote engine itself and are not sent.
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                 "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
                 "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repetition_penalty",
                 "logit_bias": "logit_bias"}
CONVERTED = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show")
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
