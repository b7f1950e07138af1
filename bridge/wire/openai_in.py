"""OpenAI request bodies -> native Ollama request bodies (pure; no engine, no HTTP client).

The mapping follows Ollama's openai/openai.go `FromChatRequest` / `FromCompleteRequest`;
responses go the other way in bridge.wire.openai_out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BadRequest, Unsupported
from bridge.wire.jsonbody import Fields
from bridge.wire.tool_choice import chosen_tools, function_name

# reasoning_effort -> native think (openai.go): "none" turns thinking off.
REASONING_EFFORT: dict[str, bool | str] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
    "max": "max", "xhigh": "max", "ultra": "max",
}
ROLE_ALIASES = {"developer": "system"}
# What the bridge's own models do with each field of a request; any other field (audio output,
# legacy `functions`, web search, `verbosity`, a misspelling) is refused with a 400 naming it, as
# OpenAI refuses an unrecognized argument. A remote engine still gets the body as sent.
_SAMPLING = frozenset({"model", "stream", "stream_options", "max_tokens", "temperature", "top_p",
                       "seed", "stop", "frequency_penalty", "presence_penalty", "logit_bias",
                       "n", "top_k", "min_p", "repeat_penalty"})
CHAT_FIELDS = _SAMPLING | {"messages", "max_completion_tokens", "response_format", "tools",
                           "tool_choice", "parallel_tool_calls", "reasoning_effort", "reasoning",
                           "logprobs", "top_logprobs"}
COMPLETION_FIELDS = _SAMPLING | {"prompt", "suffix", "logprobs"}
# Fields that ask nothing of the output, accepted at these values only: who is asking, a cache
# key (the prompt cache is automatic), a prediction (it only speeds OpenAI up; the answer is the
# same without it), stored-completion metadata without storing.
NEUTRAL: dict[str, Any] = {"user": str, "safety_identifier": str, "prompt_cache_key": str,
                           "prompt_cache_retention": str, "prediction": dict, "metadata": dict,
                           "store": (False,), "service_tier": ("auto", "default"),
                           "modalities": (["text"],), "echo": (False,), "best_of": (1,)}


@dataclass
class ChatPlan:
    """One /v1/chat/completions request: the native chat body plus the layer's own work.

    Ollama ignores `tool_choice` and `parallel_tool_calls`; honouring them keeps "none" from
    answering with tool calls, "required" from answering without one, and `false` to one call
    (as the Anthropic and Responses layers do)."""

    native: dict[str, Any]
    forced: list[str] = field(default_factory=list)  # tool_choice required / a function
    max_calls: int | None = None  # parallel_tool_calls false: at most one call
    # A tool_choice this layer cannot carry out: the bridge's own models answer it with this
    # 400; a remote OpenAI-protocol engine gets the body as sent and decides itself.
    refusal: BadRequest | None = None


def chat_to_native(body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/chat/completions body as an /api/chat body."""
    plan = chat_layer(body)
    if plan.refusal is not None:
        raise plan.refusal
    return plan.native


def chat_layer(body: dict[str, Any]) -> ChatPlan:
    """A /v1/chat/completions body as an /api/chat body and what the layer does itself."""
    f = Fields(body, "ChatCompletionRequest")
    messages = f.list("messages", "[]openai.Message")
    if not messages:
        raise BadRequest("[] is too short - 'messages'")
    native: dict[str, Any] = {
        "model": f.str("model"),
        "messages": messages_to_native(messages),
        "stream": bool(f.bool("stream", False)),
        "options": sampling_options(f),
    }
    fmt = response_format(f.raw("response_format"))
    if fmt is not None:
        native["format"] = fmt
    tools = f.list("tools", "[]api.Tool")
    refusal = None
    try:
        forced, tools = tool_choice(f.raw("tool_choice"), tools)
    except BadRequest as exc:
        forced, refusal = [], exc
    if tools:
        native["tools"] = tools
    think = reasoning(f)
    if think is not None:
        native["think"] = think
    logprobs, top = f.bool("logprobs"), f.int("top_logprobs")
    if logprobs is not None:
        native["logprobs"] = logprobs
    if top is not None:  # 0..20, checked by the native parser (Ollama's text)
        native["top_logprobs"] = top
    return ChatPlan(native, forced, 1 if f.bool("parallel_tool_calls", True) is False else None,
                    refusal)


def tool_choice(choice: Any, tools: list[Any]) -> tuple[list[str], list[Any]]:
    """(names one of which must be called, the tools the model is shown) from Chat
    Completions' `tool_choice`: "auto", "none", "required", `{"type": "function", "function":
    {"name": ...}}` or `{"type": "allowed_tools", "allowed_tools": {"tools", "mode"}}`."""
    return chosen_tools(choice, tools, named=_function_choice,
                        name_field="tool_choice.function.name", allowed=_allowed_tools,
                        unknown=_unknown_choice)


def _function_choice(choice: dict) -> Any:
    fn = choice.get("function")
    return fn.get("name") if isinstance(fn, dict) else None


def _allowed_tools(choice: dict) -> tuple[set[Any], Any]:
    spec = choice.get("allowed_tools")
    spec = spec if isinstance(spec, dict) else {}
    listed = spec.get("tools")
    return ({function_name(t) for t in (listed if isinstance(listed, list) else [])},
            spec.get("mode", "auto"))


def _unknown_choice(choice: Any) -> BadRequest:
    return BadRequest(f"invalid tool_choice: {choice!r} "
                      "(expected none, auto, required or a function)")


def completion_to_native(body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/completions body as an /api/generate body."""
    f = Fields(body, "CompletionRequest")
    prompt = f.raw("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("invalid type for 'prompt' field: only a string is supported")
    native = {"model": f.str("model"), "prompt": prompt or "", "suffix": f.str("suffix"),
              "stream": bool(f.bool("stream", False)), "options": sampling_options(f)}
    top = f.int("logprobs")  # the legacy API's int: that many alternatives per token (0: none)
    if top is not None:
        if not 0 <= top <= 20:
            raise BadRequest("logprobs must be between 0 and 20")
        native["logprobs"], native["top_logprobs"] = True, top
    return native


def sampling_options(f: Fields) -> dict[str, Any]:
    """OpenAI sampling fields as native options; temperature and top_p default to 1.0."""
    options: dict[str, Any] = {"temperature": f.number("temperature", 1.0),
                               "top_p": f.number("top_p", 1.0)}
    max_tokens = f.int("max_tokens")
    if max_tokens is None:
        max_tokens = f.int("max_completion_tokens")
    if max_tokens is not None:
        if max_tokens < 0:
            raise BadRequest(f"invalid max_tokens: {max_tokens} (must be at least 0)")
        options["num_predict"] = max_tokens
    for name in ("seed",):
        value = f.int(name)
        if value is not None:
            options[name] = value
    top_k = f.int("top_k")  # not OpenAI's; the name local OpenAI-protocol servers read
    if top_k is not None:
        options["top_k"] = top_k
    for name in ("frequency_penalty", "presence_penalty", "min_p", "repeat_penalty"):
        value = f.number(name)
        if value is not None:
            options[name] = value
    bias = f.raw("logit_bias")
    if bias is not None and bias != {}:  # checked by the native parser, the ids at admission
        options["logit_bias"] = bias
    stop = f.raw("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        options["stop"] = stop
    elif stop is not None:
        raise BadRequest("invalid type for 'stop' field: expected a string or an array of strings")
    return options


def unsupported_field(body: dict[str, Any], honoured: frozenset[str]) -> Unsupported | None:
    """The 400 for the first field the bridge's own models would not honour (None: none)."""
    for key, value in body.items():
        if key in honoured or value is None:
            continue
        allowed = NEUTRAL.get(key)
        if isinstance(allowed, type) and isinstance(value, allowed):
            continue
        if isinstance(allowed, tuple) and value in allowed:
            continue
        return Unsupported(f"{key}: not supported by mlx-bridge for MLX models"
                           + (f" (only {', '.join(map(json.dumps, allowed))})"
                              if isinstance(allowed, tuple) else ""))
    return None


def many_choices(body: dict[str, Any]) -> BadRequest | None:
    """The bridge's own models answer one choice: `n` > 1 is their 400 (a remote engine gets it
    as sent and may answer several); `n` < 1 is nobody's request."""
    n = Fields(body, "ChatCompletionRequest").int("n")
    if n is not None and n < 1:
        raise BadRequest(f"n: {n} is not a number of choices (at least 1)")
    if n is not None and n > 1:
        return BadRequest(f"n: {n} choices were asked for; one choice per request is supported")
    return None


def include_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def response_format(value: Any) -> str | dict[str, Any] | None:
    """`response_format` as native `format`: json_object -> "json", json_schema -> its schema."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"invalid response_format: {json.dumps(value)} (expected an object "
                         'such as {"type": "json_object"})')
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise BadRequest(f"invalid response_format type: {kind!r} "
                     "(expected text, json_object or json_schema)")


def reasoning(f: Fields) -> bool | str | None:
    """`reasoning_effort` or `reasoning.effort` as native `think`."""
    effort = f.raw("reasoning_effort")
    nested = f.raw("reasoning")
    if effort is None and isinstance(nested, dict):
        effort = nested.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in REASONING_EFFORT:
        raise BadRequest(f"invalid reasoning value: {effort!r} "
                         f"(must be one of {', '.join(REASONING_EFFORT)})")
    return REASONING_EFFORT[effort]


def messages_to_native(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as native ones; a tool result's tool_call_id names its tool."""
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"invalid message at index {i}: expected an object")
        role = msg.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        text, images = content_parts(msg.get("content"), i)
        native: dict[str, Any] = {"role": role, "content": text}
        if images:
            native["images"] = images
        thinking = msg.get("reasoning") or msg.get("reasoning_content")
        if isinstance(thinking, str) and thinking:
            native["thinking"] = thinking
        if msg.get("tool_calls"):
            native["tool_calls"] = tool_calls_to_native(msg["tool_calls"], i, names)
        if role == "tool":
            call_id, name = _optional_str(msg, "tool_call_id", i), _optional_str(msg, "name", i)
            if call_id:
                native["tool_call_id"] = call_id
            name = name or names.get(call_id)
            if name:
                native["tool_name"] = name
        out.append(native)
    return out


def _optional_str(msg: dict[str, Any], key: str, index: int) -> str:
    value = msg.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"invalid {key} in message at index {index}: expected a string")
    return value or ""


def content_parts(content: Any, index: int) -> tuple[str, list[str]]:
    """A message's content (a string or typed parts) as text plus base64 images."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest(f"invalid message content type at index {index}")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(data_url_image(part.get("image_url")))
        else:
            raise BadRequest(f"invalid message content part at index {index}: {kind!r}")
    return "\n".join(texts), images


def data_url_image(value: Any) -> str:
    """The base64 payload of a `data:image/...;base64,` URL (remote URLs are not fetched)."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise BadRequest("invalid image input")
    return url.split(";base64,", 1)[1]


def tool_calls_to_native(calls: Any, index: int, names: dict[str, str]) -> list[dict[str, Any]]:
    """Assistant tool calls: arguments go from a JSON string to an object."""
    if not isinstance(calls, list):
        raise BadRequest(f"invalid tool_calls in message at index {index}")
    out = []
    for n, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"invalid tool_calls in message at index {index}")
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):  # deeper than Python's stack: not worth a 500
                raise BadRequest(
                    f"invalid tool call arguments in message at index {index}") from None
        native: dict[str, Any] = {"function": {"index": n, "name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            native["id"] = call["id"]
            names[call["id"]] = fn["name"]
        out.append(native)
    return out


def embeddings_check(body: dict[str, Any]) -> str:
    """Validate a /v1/embeddings body the way Ollama does; returns the model name."""
    f = Fields(body, "EmbedRequest")
    value = f.raw("input")
    if value is None or value == [] or not (
            isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
        raise BadRequest("invalid input")
    encoding = f.raw("encoding_format")
    if encoding not in (None, "", "float", "base64"):
        raise BadRequest(f"invalid encoding_format: {encoding!r} (must be \"float\" or \"base64\")")
    return f.str("model")
