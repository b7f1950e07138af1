"""OpenAI Responses request bodies -> native /api/chat bodies (pure; no engine, no HTTP client).

Follows Ollama's openai/responses.go `FromResponsesRequest` (spec §3b), with the bridge's rule on
top: a field is honoured or refused, never dropped. The bridge is stateless, so anything that
needs a stored response or conversation is refused; so are built-in tools. Refusals the upstream
might still serve are `Unsupported` (an `auto` model falls back to it); malformed values are
`BadRequest`. Responses go the other way in bridge.wire.responses_out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BadRequest, Unsupported
from bridge.wire.jsonbody import Fields
from bridge.wire.openai_in import REASONING_EFFORT
from bridge.wire.tool_choice import chosen_tools

STRUCT = "ResponsesRequest"
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
SUMMARIES = (None, "auto", "concise", "detailed")
# What a stateless bridge cannot do: refused whenever the field is set at all.
STATEFUL = {"previous_response_id":
            "responses are not stored (send the whole conversation in input)",
            "conversation": "conversations are not stored (send the whole conversation in input)",
            "prompt": "stored prompt templates are not available"}
# Every field this layer reads (honoured, echoed, or refused by value below); any other is a 400
# naming it, as OpenAI refuses an unrecognized argument. prompt_cache_retention: caching is
# automatic (the prompt cache), nothing to retain.
FIELDS = frozenset({"model", "input", "instructions", "tools", "tool_choice", "stream",
                    "stream_options", "parallel_tool_calls", "max_tool_calls", "temperature",
                    "top_p", "max_output_tokens", "truncation", "text", "reasoning", "include",
                    "top_logprobs", "metadata", "user", "safety_identifier", "prompt_cache_key",
                    "prompt_cache_retention", "store", "background", "service_tier", *STATEFUL})
INCLUDABLE = ("reasoning.encrypted_content", "message.output_text.logprobs")
IMAGE_PREFIXES = ("data:image/jpeg;base64,", "data:image/jpg;base64,", "data:image/png;base64,",
                  "data:image/webp;base64,", "data:;base64,")


@dataclass
class ResponsesPlan:
    """One /v1/responses request: the native chat body, the layer's own work, what to echo."""

    native: dict[str, Any]
    forced: list[str] = field(default_factory=list)  # tool_choice required / a function
    max_calls: int | None = None  # parallel_tool_calls false, max_tool_calls
    encrypted_reasoning: bool = False  # include: ["reasoning.encrypted_content"]
    logprobs: bool = False  # include: ["message.output_text.logprobs"] (or top_logprobs > 0)
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response repeats


def responses_check(body: dict[str, Any]) -> str:
    """What is checked before routing; returns the model name."""
    model = Fields(body, STRUCT).str("model")
    if not model:
        raise BadRequest("model is required")
    return model


def responses_to_native(body: dict[str, Any]) -> ResponsesPlan:
    """A /v1/responses body as an /api/chat body plus the layer's work."""
    responses_check(body)
    f = Fields(body, STRUCT)
    refuse_stateful(f)
    tools = tools_to_native(f.list("tools", "[]responses.Tool"))
    forced, tools = tool_choice(f.raw("tool_choice"), tools)
    max_calls = call_limit(f)
    instructions = f.str("instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages += input_to_messages(f.raw("input"))
    if not messages:
        raise BadRequest("input is required")
    native: dict[str, Any] = {"model": f.str("model"), "messages": messages,
                              "stream": bool(f.bool("stream", False)),
                              "options": sampling_options(f),
                              "truncate": truncation(f.raw("truncation")) == "auto"}
    if tools:
        native["tools"] = tools
    fmt, text = text_config(f.raw("text"))
    if fmt is not None:
        native["format"] = fmt
    think, reasoning = reasoning_config(f.raw("reasoning"))
    if think is not None:
        native["think"] = think
    included = include(f.raw("include"))
    top = f.int("top_logprobs") or 0
    if not 0 <= top <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    logprobs = "message.output_text.logprobs" in included or top > 0
    if logprobs:
        native["logprobs"], native["top_logprobs"] = True, top
    echo = {"instructions": f.str("instructions") or None, "tools": f.list("tools", ""),
            "tool_choice": f.raw("tool_choice") or "auto", "text": text, "reasoning": reasoning,
            "temperature": native["options"]["temperature"], "top_p": f.number("top_p"),
            "max_output_tokens": f.int("max_output_tokens"),
            "max_tool_calls": f.int("max_tool_calls"),
            "parallel_tool_calls": f.bool("parallel_tool_calls", True),
            "truncation": truncation(f.raw("truncation")), "metadata": metadata(f.raw("metadata")),
            "user": f.str("user") or None, "safety_identifier": f.str("safety_identifier") or None,
            "prompt_cache_key": f.str("prompt_cache_key") or None, "top_logprobs": top}
    return ResponsesPlan(native, forced, max_calls,
                         encrypted_reasoning="reasoning.encrypted_content" in included,
                         logprobs=logprobs, echo=echo)


def refuse_stateful(f: Fields) -> None:
    """Fields a stateless, single-tier, non-streaming-obfuscated bridge cannot honour, and
    fields it does not know."""
    for key, value in f.body.items():
        if key not in FIELDS and value is not None:
            raise Unsupported(f"{key}: not supported by mlx-bridge for MLX models")
    for key, why in STATEFUL.items():
        if f.raw(key) is not None:
            raise Unsupported(f"{key}: {why}")
    if f.bool("store", False):
        raise Unsupported("store: true is not supported: mlx-bridge does not store responses "
                          "(send store: false)")
    if f.bool("background", False):
        raise Unsupported("background: true is not supported (responses are not stored)")
    if f.raw("service_tier") not in (None, "auto", "default"):
        raise Unsupported(f"service_tier {f.raw('service_tier')!r} is not available "
                          "(only auto/default)")
    options = f.dict("stream_options", "responses.StreamOptions")
    if options.get("include_obfuscation"):
        raise Unsupported("stream_options.include_obfuscation is not supported")


def sampling_options(f: Fields) -> dict[str, Any]:
    """temperature (1.0 when absent, as Ollama sends), top_p, max_output_tokens."""
    temperature = f.number("temperature", 1.0)
    if not 0 <= temperature <= 2:
        raise BadRequest("temperature: must be between 0 and 2")
    options: dict[str, Any] = {"temperature": temperature}
    top_p = f.number("top_p")
    if top_p is not None:
        if not 0 <= top_p <= 1:
            raise BadRequest("top_p: must be between 0 and 1")
        options["top_p"] = top_p
    limit = f.int("max_output_tokens")
    if limit is not None:
        if limit < 1:
            raise BadRequest("max_output_tokens: must be at least 1")
        options["num_predict"] = limit
    return options


def call_limit(f: Fields) -> int | None:
    """parallel_tool_calls false -> one call; max_tool_calls -> at most that many."""
    limit = 1 if f.bool("parallel_tool_calls", True) is False else None
    most = f.int("max_tool_calls")
    if most is not None:
        if most < 1:
            raise BadRequest("max_tool_calls: must be at least 1")
        limit = most if limit is None else min(limit, most)
    return limit


def truncation(value: Any) -> str:
    """`disabled` (OpenAI's default): too long an input is a 400; `auto` drops its start."""
    if value in (None, "disabled", "auto"):
        return value or "disabled"
    raise BadRequest("truncation: must be auto or disabled")


def metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest("metadata: must be an object of strings")
    return value


def include(value: Any) -> set[str]:
    """What `include` asks for: `reasoning.encrypted_content` (the plain reasoning text) and
    `message.output_text.logprobs`; anything else is refused."""
    if value is None:
        return set()
    if not isinstance(value, list):
        raise BadRequest("include: must be an array")
    for item in value:
        if item not in INCLUDABLE:
            raise Unsupported(f"include: {item!r} is not available (only {', '.join(INCLUDABLE)})")
    return set(value)


def text_config(value: Any) -> tuple[str | dict[str, Any] | None, dict[str, Any]]:
    """(native format, the `text` the response echoes) from `text.format` and `text.verbosity`."""
    if value is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise BadRequest("text: must be an object")
    if value.get("verbosity") not in (None, "medium"):
        raise Unsupported("text.verbosity: only medium is supported")
    fmt = value.get("format") or {"type": "text"}
    if not isinstance(fmt, dict):
        raise BadRequest(f"invalid text.format: {json.dumps(fmt)} (expected an object such as "
                         '{"type": "json_object"})')
    kind = fmt.get("type")
    echo = {**value, "format": fmt}
    if kind == "text":
        return None, echo
    if kind == "json_object":
        return "json", echo
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequest("text.format.schema must be a JSON schema object")
        return fmt["schema"], echo
    raise BadRequest(f"invalid text.format type: {kind!r} "
                     "(expected text, json_object or json_schema)")


def reasoning_config(value: Any) -> tuple[bool | str | None, dict[str, Any] | None]:
    """(native think, the `reasoning` echoed) from `reasoning.effort` / `reasoning.summary`."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise BadRequest("reasoning: must be an object")
    effort = value.get("effort")
    if effort is not None and effort not in REASONING_EFFORT:
        raise BadRequest(f'invalid reasoning value: "{effort}" '
                         '(must be "minimal", "low", "medium", '
                         '"high", "xhigh", "ultra", "max", or "none")')
    summary = value.get("summary", value.get("generate_summary"))
    if summary not in SUMMARIES:
        raise BadRequest("reasoning.summary: must be auto, concise or detailed")
    think = REASONING_EFFORT[effort] if effort is not None else None
    return think, {"effort": effort, "summary": summary}


def tools_to_native(tools: list[Any]) -> list[dict[str, Any]]:
    """Function tools (flat, as Responses has them) as native tools; built-in tools are refused.

    `strict` is accepted: the arguments follow the schema by construction only under a
    required tool_choice (a grammar); otherwise the model's call is parsed as written.
    """
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise Unsupported(f"tools[{i}]: built-in tools ({kind!r}) are not supported; "
                              "only function tools")
        name, params = tool.get("name"), tool.get("parameters")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}].name: required")
        if params is not None and not isinstance(params, dict):
            raise BadRequest(f"tools[{i}].parameters: must be a JSON schema object")
        fn: dict[str, Any] = {"name": name,
                              "parameters": params or {"type": "object", "properties": {}}}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def tool_choice(choice: Any, tools: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(names one of which must be called, the tools the model is shown) from the Responses
    API's `tool_choice`: "auto", "none", "required", `{"type": "function", "name"}` or
    `{"type": "allowed_tools", "tools", "mode"}`; another form is Unsupported."""
    return chosen_tools(
        choice, tools, named=lambda c: c.get("name"), name_field="tool_choice.name",
        allowed=lambda c: ({t.get("name") for t in c.get("tools") or [] if isinstance(t, dict)},
                           c.get("mode", "auto")),
        unknown=lambda c: Unsupported(f"tool_choice {c!r} is not supported "
                                      "(auto, none, required or a function)"))


def input_to_messages(value: Any) -> list[dict[str, Any]]:
    """`input`: a string (one user message) or items in order."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequest("input: must be a string or an array of input items")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call_id -> function name
    thinking = ""  # a reasoning item: the next assistant message's thinking
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequest(f"input[{i}]: expected an object")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind is None:
            raise BadRequest("input item missing required 'type' field")
        if kind == "reasoning":
            thinking = reasoning_text(item)
            continue
        if kind == "message":
            msg = message_item(item, i)
        elif kind == "function_call":
            msg = function_call_item(item, i, names, out)
        elif kind == "function_call_output":
            msg = function_output_item(item, i, names)
        else:
            raise Unsupported(f'input[{i}]: unknown input item type: "{kind}"')
        if thinking and msg["role"] == "assistant":
            msg["thinking"], thinking = thinking, ""
        if not out or msg is not out[-1]:
            out.append(msg)
    return out


def message_item(item: dict[str, Any], index: int) -> dict[str, Any]:
    role = ROLES.get(item.get("role")) if isinstance(item.get("role"), str) else None
    if role is None:
        raise BadRequest(f"input[{index}].role: must be user, assistant, system or developer")
    text, images = content_parts(item.get("content"), f"input[{index}].content")
    msg: dict[str, Any] = {"role": role, "content": text}
    if images:
        msg["images"] = images
    return msg


def content_parts(content: Any, where: str) -> tuple[str, list[str]]:
    """A string, or parts: input_text / output_text / refusal (joined) and input_image."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise BadRequest(f"{where}: must be a string or an array of content parts")
    texts, images = [], []
    for n, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "refusal"):
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(key), str):
                raise BadRequest(f"{where}[{n}].{key}: must be a string")
            texts.append(part[key])
        elif kind == "input_image":
            images.append(image_payload(part, f"{where}[{n}]"))
        elif kind == "input_file":
            raise Unsupported("file inputs are not currently supported")
        else:
            raise Unsupported(f"{where}[{n}]: content parts of type {kind!r} are not supported")
    return "".join(texts), images


def image_payload(part: dict[str, Any], where: str) -> str:
    """The base64 data of a `data:` image URL; remote URLs and file ids are refused."""
    url = part.get("image_url")
    if part.get("file_id") and not url:
        raise Unsupported(f"{where}: file_id images are not supported (send a base64 data URL)")
    if not isinstance(url, str):
        raise BadRequest("invalid image input")
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, "
                         "please use base64 encoded data instead")
    for prefix in IMAGE_PREFIXES:
        if url.startswith(prefix):
            return url[len(prefix):]
    raise BadRequest("invalid image input")


def function_call_item(item: dict[str, Any], index: int, names: dict[str, str],
                       out: list[dict[str, Any]]) -> dict[str, Any]:
    """A function call: added to the assistant message just before it, or a new one."""
    call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str) or not name:
        raise BadRequest(f"input[{index}]: a function_call needs call_id and name")
    try:
        arguments = json.loads(args) if isinstance(args, str) and args.strip() else {}
    except (ValueError, RecursionError):
        raise BadRequest(f"input[{index}].arguments: not valid JSON") from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"input[{index}].arguments: must be a JSON object")
    names[call_id] = name
    call = {"id": call_id, "function": {"name": name, "arguments": arguments}}
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
        return out[-1]
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def function_output_item(item: dict[str, Any], index: int, names: dict[str, str]) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"input[{index}]: a function_call_output needs call_id")
    text, images = content_parts(item.get("output", ""), f"input[{index}].output")
    msg: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
    if names.get(call_id):
        msg["tool_name"] = names[call_id]
    if images:
        msg["images"] = images
    return msg


def reasoning_text(item: dict[str, Any]) -> str:
    """A reasoning item's text: encrypted_content (our plain thinking), else its summary."""
    if isinstance(item.get("encrypted_content"), str) and item["encrypted_content"]:
        return item["encrypted_content"]
    parts = [*(item.get("summary") or []), *(item.get("content") or [])]
    return "".join(p["text"] for p in parts
                   if isinstance(p, dict) and isinstance(p.get("text"), str))
