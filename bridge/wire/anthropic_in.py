"""Anthropic Messages request bodies -> native /api/chat bodies (pure; no engine, no HTTP client).

Follows Ollama's anthropic/anthropic.go `FromMessagesRequest` (spec §3a), with one rule of the
bridge on top: a field is honoured or refused, never dropped. Refusals the upstream might still
serve (server tools, documents, unknown fields) are `Unsupported`, so an `auto` model falls back
to it; malformed values are `BadRequest`. Responses go the other way in bridge.wire.anthropic_out.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BadRequest, Unsupported
from bridge.wire.anthropic_context import apply_edits, parse_edits
from bridge.wire.jsonbody import Fields

STRUCT = "MessagesRequest"
# Honoured by the conversion below.
HONOURED = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "stream",
                      "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking",
                      "output_config", "metadata", "context_management"})
# Accepted with nothing to do: one service tier; prompt caching is automatic (prompt cache).
NO_EFFECT = frozenset({"service_tier", "cache_control"})
SERVICE_TIERS = ("auto", "standard_only")
# A server-held conversation (`thread`, beta message-threads) is refused with the code Anthropic's
# SDK reads (`error.details.error_code`): its tool runner then resends the turn without a thread.
# A BadRequest, not Unsupported: no backend behind the bridge holds conversations.
THREAD_UNSUPPORTED = {"error_code": "thread_unsupported_request"}
# output_config.effort -> native think level (Ollama: xhigh reads as high).
EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "max"}


@dataclass
class MessagesPlan:
    """One /v1/messages request: the native chat body plus what the layer itself must do."""

    native: dict[str, Any]
    forced: list[str] = field(default_factory=list)  # tool_choice any/tool: names to call
    show_thinking: bool = True  # thinking.display "omitted" sends empty thinking blocks
    max_calls: int | None = None  # disable_parallel_tool_use: at most one tool_use block
    user_id: str = ""  # metadata.user_id, for the request log
    context: dict[str, Any] | None = None  # context_management.applied_edits, when asked for


def messages_check(body: dict[str, Any], counting: bool = False) -> str:
    """Ollama's checks, in its order, before routing; returns the model name."""
    f = Fields(body, STRUCT)
    model = f.str("model")
    if not model:
        raise BadRequest("model is required")
    if not counting:
        max_tokens = f.int("max_tokens")
        if max_tokens is None or max_tokens <= 0:
            raise BadRequest("max_tokens is required and must be positive")
    if not f.list("messages", "[]anthropic.MessageParam"):
        raise BadRequest("messages is required")
    if not counting and body.get("thread") is not None:
        # Before routing, for every backend: Ollama ignores the field, and the SDK would then
        # send only each new turn, continuing a conversation that nobody holds.
        raise BadRequest("thread: message threads are not supported by mlx-bridge; send the "
                         "whole conversation without `thread`", details=THREAD_UNSUPPORTED)
    return model


def messages_to_native(body: dict[str, Any], counting: bool = False) -> MessagesPlan:
    """A /v1/messages (or count_tokens) body as an /api/chat body and the layer's own work."""
    messages_check(body, counting)
    f = Fields(body, STRUCT)
    refuse_unknown(body)
    tools = tools_to_native(f.list("tools", "[]anthropic.Tool"))
    forced, max_calls, tools = tool_choice(f.raw("tool_choice"), tools)
    think, show = thinking(f.raw("thinking"))
    config = output_config(f.raw("output_config"))
    if think is None and "effort" in config:
        think = config["effort"]
    native: dict[str, Any] = {
        "model": f.str("model"),
        "messages": system_messages(f.raw("system"))
        + convert_messages(f.list("messages", "[]anthropic.MessageParam")),
        "stream": bool(f.bool("stream", False)),
        "options": sampling_options(f),
    }
    if tools:
        native["tools"] = tools
    if think is not None:
        native["think"] = think
    if "format" in config:
        native["format"] = config["format"]
    plan = MessagesPlan(native, forced, show, max_calls, metadata_user(f.raw("metadata")))
    if f.raw("context_management") is not None:
        edits = parse_edits(f.raw("context_management"))
        applied = apply_edits(native["messages"], edits, estimate_input_tokens(native))
        plan.context = {"applied_edits": applied}
    return plan


def refuse_unknown(body: dict[str, Any]) -> None:
    for key, value in body.items():
        if key in HONOURED or value is None:
            continue
        if key == "service_tier" and value not in SERVICE_TIERS:
            raise BadRequest(f"service_tier: must be one of {', '.join(SERVICE_TIERS)}")
        if key not in NO_EFFECT:
            raise Unsupported(f"{key}: not supported by mlx-bridge for MLX models")


def sampling_options(f: Fields) -> dict[str, Any]:
    """Only the fields sent become options (no 1.0 defaults, unlike /v1/chat/completions)."""
    options: dict[str, Any] = {}
    max_tokens = f.int("max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    for name in ("temperature", "top_p"):
        value = f.number(name)
        if value is not None:
            if not 0 <= value <= 1:
                raise BadRequest(f"{name}: must be between 0 and 1")
            options[name] = value
    top_k = f.int("top_k")
    if top_k is not None:
        if top_k < 0:
            raise BadRequest("top_k: must be at least 0")
        options["top_k"] = top_k
    stops = f.list("stop_sequences", "[]string")
    if not all(isinstance(s, str) and s for s in stops):
        raise BadRequest("stop_sequences: must be an array of non-empty strings")
    if stops:
        options["stop"] = stops
    return options


def system_messages(system: Any) -> list[dict[str, Any]]:
    """`system`, a string or text blocks (joined with no separator, as Ollama), as one message."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise BadRequest("system: must be a string or an array of text blocks")
    texts = []
    for block in system:
        if (not isinstance(block, dict) or block.get("type") != "text"
                or not isinstance(block.get("text"), str)):
            raise BadRequest("system: only text blocks are allowed")
        texts.append(block["text"])
    text = "".join(texts)
    return [{"role": "system", "content": text}] if text else []


def convert_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Anthropic turns as native messages; tool results become `tool` messages before the text."""
    names: dict[str, str] = {}  # tool_use id -> tool name, from earlier assistant turns
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"messages.{i}: expected an object")
        role = msg.get("role")
        if not isinstance(role, str) or role.lower() not in ("user", "assistant"):
            raise BadRequest(f"messages.{i}.role: must be \"user\" or \"assistant\"")
        out += convert_message(role.lower(), msg.get("content"), i, names)
    return out


def convert_message(role: str, content: Any, index: int,
                    names: dict[str, str]) -> list[dict[str, Any]]:
    """One Anthropic message: its blocks fold into one native message (tool results apart)."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"messages.{index}.content: must be a string or an array of "
                         "content blocks")
    msg: dict[str, Any] = {"role": role, "content": ""}
    texts: list[str] = []
    results: list[dict[str, Any]] = []
    for n, block in enumerate(content):
        where = f"messages.{index}.content.{n}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_str(block, "text", where))
        elif kind == "image":
            msg.setdefault("images", []).append(image_data(block.get("source"), where))
        elif kind == "tool_use" and role == "assistant":
            msg.setdefault("tool_calls", []).append(tool_use_call(block, where, names))
        elif kind == "tool_result" and role == "user":
            results.append(tool_result_message(block, where, names))
        elif kind == "thinking" and role == "assistant":
            msg["thinking"] = _str(block, "thinking", where)  # the last block wins, as in Ollama
        elif kind in ("tool_use", "tool_result", "thinking"):
            raise BadRequest(f"{where}: a {kind} block cannot be in a {role} message")
        else:
            raise Unsupported(f"{where}: content blocks of type {kind!r} are not supported")
    msg["content"] = "".join(texts)
    keep = bool(msg["content"] or msg.get("images") or msg.get("tool_calls") or msg.get("thinking"))
    return results + ([msg] if keep or not results else [])


def _str(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{where}.{key}: must be a string")
    return value


def image_data(source: Any, where: str) -> str:
    """A base64 image source's data (checked to decode); URL sources are refused as in Ollama."""
    if not isinstance(source, dict):
        raise BadRequest(f"{where}: invalid image source")
    if source.get("type") != "base64":
        raise BadRequest(f"invalid image source type: {source.get('type')}. "
                         "Only base64 images are supported.")
    data = source.get("data")
    if not isinstance(data, str):
        raise BadRequest(f"{where}: invalid image source")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"invalid base64 image data: {exc}") from None
    return data


def tool_use_call(block: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest("tool_use block missing required 'id' field")
    if not isinstance(name, str) or not name:
        raise BadRequest("tool_use block missing required 'name' field")
    arguments = block.get("input") if block.get("input") is not None else {}
    if not isinstance(arguments, dict):
        raise BadRequest(f"{where}.input: must be an object")
    names[call_id] = name
    return {"id": call_id, "function": {"name": name, "arguments": arguments}}


def tool_result_message(block: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    """A tool result as a native `tool` message; `is_error` is said in the text the model reads."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_use_id: required")
    content = block.get("content")
    texts, images = [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for n, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_str(part, "text", f"{where}.content.{n}"))
            elif kind == "image":
                images.append(image_data(part.get("source"), f"{where}.content.{n}"))
            else:
                raise Unsupported(f"{where}.content.{n}: tool result blocks of type {kind!r} "
                                  "are not supported")
    elif content is not None:
        raise BadRequest(f"{where}.content: must be a string or an array of blocks")
    text = "".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    out: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
    if names.get(call_id):
        out["tool_name"] = names[call_id]
    if images:
        out["images"] = images
    return out


def tools_to_native(tools: list[Any]) -> list[dict[str, Any]]:
    """Client tools as native function tools; server tools (web search, bash...) are refused."""
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools.{i}: expected an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise Unsupported(f"tools.{i}: server tools ({kind!r}) are not supported; "
                              "only client tools")
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{i}.name: required")
        if not isinstance(schema, dict):
            raise BadRequest(f'invalid input_schema for tool "{name}": '
                             "must be a JSON schema object")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def tool_choice(choice: Any, tools: list[dict[str, Any]]
                ) -> tuple[list[str], int | None, list[dict[str, Any]]]:
    """(names one of which must be called, max tool calls, the tools the model is shown)."""
    if choice is None:
        return [], None, tools
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise BadRequest("tool_choice.type: must be one of auto, any, tool, none")
    max_calls = 1 if choice.get("disable_parallel_tool_use") is True else None
    if kind == "none":
        return [], None, []  # the model is not told about tools at all
    if kind == "auto":
        return [], max_calls, tools
    if not tools:
        raise BadRequest(f"tool_choice.type {kind!r} needs tools")
    names = [t["function"]["name"] for t in tools]
    if kind == "tool":
        name = choice.get("name")
        if name not in names:
            raise BadRequest(f"tool_choice.name: {name!r} is not one of the tools")
        names = [name]
    return names, max_calls, tools


def thinking(value: Any) -> tuple[bool | None, bool]:
    """(native think, show thinking text) from `thinking`."""
    if value is None:
        return None, True
    kind = value.get("type") if isinstance(value, dict) else None
    display = value.get("display") if isinstance(value, dict) else None
    if display not in (None, "summarized", "omitted"):
        raise BadRequest("thinking.display: must be summarized or omitted")
    if kind == "disabled":
        return False, True
    if kind == "enabled":
        # As Ollama (spec §3a): the budget only switches thinking on, whatever its size or its
        # absence (Anthropic would ask for ≥ 1024 and < max_tokens); a non-number or a negative
        # one is a 400.
        budget = value.get("budget_tokens")
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)
                                   or budget < 0):
            raise BadRequest("thinking.budget_tokens: must be a non-negative integer")
        return True, display != "omitted"
    if kind == "adaptive":
        return True, display != "omitted"
    if kind == "between_tools":
        raise Unsupported("thinking.type 'between_tools' is not supported")
    raise BadRequest("thinking.type: must be one of enabled, disabled, adaptive")


def output_config(value: Any) -> dict[str, Any]:
    """`output_config`: effort (-> a think level) and format (a JSON schema, enforced)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("output_config: must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if key == "effort":
            if item not in EFFORT:
                raise BadRequest(f"output_config.effort: must be one of {', '.join(EFFORT)}")
            out["effort"] = EFFORT[item]
        elif key == "format":
            schema = item.get("schema") if isinstance(item, dict) else None
            if (not isinstance(item, dict) or item.get("type") != "json_schema"
                    or not isinstance(schema, dict)):
                raise BadRequest('output_config.format: expected '
                                 '{"type": "json_schema", "schema": {...}}')
            out["format"] = schema
        else:
            raise Unsupported(f"output_config.{key}: not supported by mlx-bridge")
    return out


def metadata_user(value: Any) -> str:
    """`metadata` holds only `user_id` (Anthropic's rule); it goes to the request log."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        raise BadRequest("metadata: must be an object")
    for key in value:
        if key != "user_id":
            raise BadRequest(f"metadata.{key}: Extra inputs are not permitted")
    user = value.get("user_id")
    if user is not None and not isinstance(user, str):
        raise BadRequest("metadata.user_id: must be a string")
    return user or ""


def estimate_input_tokens(native: dict[str, Any]) -> int:
    """Ollama's `EstimateInputTokens` (characters / 4) for `message_start`, before the real count.

    >>> estimate_input_tokens({"messages": [{"role": "user", "content": "12345678"}]})
    2
    """
    chars = sum(len(str(m.get("content", ""))) for m in native.get("messages", []))
    chars += len(json.dumps(native["tools"])) if native.get("tools") else 0
    return chars // 4
