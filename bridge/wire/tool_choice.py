"""`tool_choice` as the OpenAI-shaped layers honour it (Chat Completions and Responses spell the
named and allowed-tools forms differently; what the forms mean is here once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.errors import BadRequest, BridgeError


def function_name(tool: Any) -> str | None:
    """`{"type": "function", "function": {"name": ...}}`'s name (None when malformed: the native
    parser answers malformed tools)."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) else None


def chosen_tools(choice: Any, tools: list[Any], *, named: Callable[[dict], Any], name_field: str,
                 allowed: Callable[[dict], tuple[set[Any], Any]],
                 unknown: Callable[[Any], BridgeError]) -> tuple[list[str], list[Any]]:
    """(names one of which must be called, the tools the model is shown) from `tool_choice`:
    "auto" / absent, "none" (the model is shown no tools), "required", a named function
    (`named` reads its name, `name_field` says where), or allowed tools (`allowed` reads the
    names and the mode, auto or required); any other form raises `unknown(choice)`.
    `tools` are native tools (`{"type": "function", "function": {...}}`)."""
    names = [n for n in map(function_name, tools) if n]
    if choice in (None, "auto"):
        return [], tools
    if choice == "none":
        return [], []
    if choice == "required":
        if not names:
            raise BadRequest("tool_choice 'required' needs tools")
        return names, tools
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        name = named(choice)
        if name not in names:
            raise BadRequest(f"{name_field}: {name!r} is not one of the tools")
        return [name], tools
    if kind == "allowed_tools":
        listed, mode = allowed(choice)
        shown = [t for t in tools if function_name(t) in listed]
        if not shown or mode not in ("auto", "required"):
            raise BadRequest("tool_choice.allowed_tools: name function tools and a mode "
                             "(auto or required)")
        return ([function_name(t) for t in shown] if mode == "required" else []), shown
    raise unknown(choice)
