"""Native Ollama request shapes, parsed strictly from decoded JSON (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.engine.gotemplate import check as check_template
from bridge.errors import BadRequest
from bridge.wire.durations import parse_keep_alive
from bridge.wire.jsonbody import Fields, type_error
from bridge.wire.limits import Limits, check_images, check_messages
from bridge.wire.options import Options, parse_options

THINK_LEVELS = ("high", "medium", "low", "max")
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat message, normalised (role lower-cased, content a string)."""

    role: str
    content: str = ""
    images: list[str] = field(default_factory=list)
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""

    def to_template(self) -> dict[str, Any]:
        """The dict handed to a Hugging Face chat template."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.tool_name:
            out["name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.thinking:
            out["reasoning_content"] = self.thinking
        return out


@dataclass
class Common:
    """Fields shared by generate and chat."""

    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options = field(default_factory=Options)
    keep_alive: float | None = None
    think: bool | str | None = None
    truncate: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    debug_render_only: bool = False  # `_debug_render_only`: answer the rendered prompt only


@dataclass
class GenerateRequest(Common):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: list[int] = field(default_factory=list)
    raw: bool = False
    images: list[str] = field(default_factory=list)


@dataclass
class ChatRequest(Common):
    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    # Not a native field: set by the Anthropic / Responses layers for a required tool call
    # (`tool_choice` any/required/a named tool): the output must call one of these tools.
    forced_tools: list[str] = field(default_factory=list)


# reflect.TypeOf names of decoded JSON values, for Duration.UnmarshalJSON's error text
_GO_ANY_TYPES = {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}


def _common(f: Fields) -> dict[str, Any]:
    raw_keep_alive = f.raw("keep_alive")
    if type(raw_keep_alive) in _GO_ANY_TYPES:
        raise BadRequest(f"Unsupported type: '{_GO_ANY_TYPES[type(raw_keep_alive)]}'")
    try:
        keep_alive = parse_keep_alive(raw_keep_alive)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    top_logprobs = f.int("top_logprobs", 0) or 0
    if not 0 <= top_logprobs <= 20:
        raise BadRequest("top_logprobs must be between 0 and 20")
    return {
        "model": f.str("model"),
        "stream": f.bool("stream", True),
        "format": parse_format(f.raw("format")),
        "options": parse_options(f.dict("options")),
        "keep_alive": keep_alive,
        "think": parse_think(f.raw("think")),
        "truncate": f.bool("truncate", True),
        "logprobs": f.bool("logprobs", False),
        "top_logprobs": top_logprobs,
        "debug_render_only": bool(f.bool("_debug_render_only", False)),
    }


def parse_generate(body: dict[str, Any], limits: Limits) -> GenerateRequest:
    """Validate a /api/generate body against the serving app's `limits`."""
    f = Fields(body, "GenerateRequest")
    req = GenerateRequest(
        **_common(f),
        prompt=f.str("prompt"),
        suffix=f.str("suffix"),
        system=f.str("system"),
        template=f.str("template"),
        context=_int_list(f, "context"),
        raw=f.bool("raw", False),
        images=_str_list(f, "images", "[]api.ImageData"),
    )
    if req.raw and (req.template or req.system or req.context):
        raise BadRequest("raw mode does not support template, system, or context")
    if req.template:  # parsed here, in the request thread: a bad one never reaches the engine
        check_template(req.template, {"System": req.system, "Prompt": req.prompt, "Response": ""},
                       limits.max_body)
    check_images(req.images, "images", limits)
    return req


def parse_chat(body: dict[str, Any], limits: Limits) -> ChatRequest:
    """Validate a /api/chat body against the serving app's `limits`."""
    f = Fields(body, "ChatRequest")
    raw_messages = f.list("messages", "[]api.Message")
    check_messages(len(raw_messages), limits)
    messages = [parse_message(m, i) for i, m in enumerate(raw_messages)]
    images = 0
    for i, m in enumerate(messages):
        images = check_images(m.images, f"messages[{i}].images", limits, images)
    tools = f.list("tools", "[]api.Tool")
    for i, tool in enumerate(tools):
        check_tool(tool, i)
    return ChatRequest(**_common(f), messages=messages, tools=tools)


def check_tool(tool: Any, index: int) -> None:
    """A tool's outer shape: {"type": str, "function": {"name": str, "parameters": {...}}}."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    ok = isinstance(tool, dict) and _opt(tool, "type", str) and (fn is None or (
        isinstance(fn, dict) and _opt(fn, "name", str) and _opt(fn, "description", str)
        and _opt(fn, "parameters", dict)))
    if not ok:
        raise BadRequest(f"invalid tool at index {index}: expected an object like "
                         '{"type":"function","function":{"name":...,"parameters":{...}}}')


def _opt(obj: dict[str, Any], key: str, kind: type) -> bool:
    """The field is absent, null, or of the given JSON type."""
    return obj.get(key) is None or isinstance(obj[key], kind)


def parse_message(raw: Any, index: int) -> Message:
    """Validate one chat message."""
    if not isinstance(raw, dict):
        raise type_error("ChatRequest", f"messages[{index}]", raw, "api.Message")
    f = Fields(raw, "Message")
    role = f.str("role").lower()
    if role not in ROLES:
        raise BadRequest(f"invalid role {role!r} in messages[{index}]: "
                         f"must be one of {', '.join(ROLES)}")
    tool_calls = f.list("tool_calls", "[]api.ToolCall")
    for call in tool_calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and _opt(fn, "name", str) and _opt(fn, "arguments", dict)):
            raise BadRequest(f"invalid tool_calls in messages[{index}]: "
                             "expected objects with a function "
                             "(a name and an arguments object)")
    return Message(
        role=role,
        content=f.str("content"),
        images=_str_list(f, "images", "[]api.ImageData"),
        thinking=f.str("thinking"),
        tool_calls=tool_calls,
        tool_name=f.str("tool_name"),
        tool_call_id=f.str("tool_call_id"),
    )


def parse_format(value: Any) -> str | dict[str, Any] | None:
    """`format`: "json", a JSON-schema object, or ""/null for none."""
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    shown = value if isinstance(value, str) else str(value)
    raise BadRequest(f'invalid format: "{shown}"; expected "json" or a valid JSON Schema object')


def parse_think(value: Any) -> bool | str | None:
    """`think`: a bool or one of the level strings."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in THINK_LEVELS:
        return value.lower()
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BadRequest(
        f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)'
    )


def _str_list(f: Fields, name: str, gotype: str) -> list[str]:
    items = f.list(name, gotype)
    if not all(isinstance(i, str) for i in items):
        raise type_error(f.struct, name, items, gotype)
    return items


def _int_list(f: Fields, name: str) -> list[int]:
    items = f.list(name, "[]int")
    if not all(isinstance(i, int) and not isinstance(i, bool) and -(2**63) <= i < 2**63
               for i in items):
        raise type_error(f.struct, name, items, "[]int")
    return items
