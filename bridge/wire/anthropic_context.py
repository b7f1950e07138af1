"""Anthropic context editing (`context_management.edits`) applied to native chat messages (pure).

Claude Code sends `context_management` on every request. Anthropic applies the edits on the
server before the prompt reaches the model; so does the bridge, on the converted native
messages, and reports what it cleared as `context_management.applied_edits` in the response.
Token counts here are Ollama's estimate (characters / 4), the same one `message_start` uses:
the edits run before the model's tokenizer is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.errors import BadRequest

CLEAR_TOOL_USES = "clear_tool_uses_20250919"
CLEAR_THINKING = "clear_thinking_20251015"
CLEARED = "[cleared to save context]"  # what the model reads where a tool result was
DEFAULT_TRIGGER = 100_000  # input tokens, as Anthropic's default
DEFAULT_KEEP_TOOL_USES = 3
DEFAULT_KEEP_THINKING_TURNS = 1
# Each edit scans every message: 200,000 edits over 2,000 tool results held a request thread for
# 71 s. Claude Code sends two; one of each kind is all an edit list needs.
MAX_EDITS = 16


@dataclass(frozen=True)
class ToolUsesEdit:
    trigger: int
    keep: int
    clear_at_least: int
    exclude: frozenset[str]
    clear_inputs: bool | frozenset[str]


@dataclass(frozen=True)
class ThinkingEdit:
    keep: int | None  # None: keep all


Edit = ToolUsesEdit | ThinkingEdit


def parse_edits(value: Any) -> list[Edit]:
    """`context_management` checked into edits; malformed values are a 400 naming the field."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise BadRequest("context_management: must be an object")
    for key in value:
        if key != "edits":
            raise BadRequest(f"context_management.{key}: Extra inputs are not permitted")
    edits = value.get("edits") or []
    if not isinstance(edits, list):
        raise BadRequest("context_management.edits: must be an array")
    if len(edits) > MAX_EDITS:
        raise BadRequest(f"context_management.edits: at most {MAX_EDITS} edits, got "
                         f"{len(edits)}")
    return [_edit(edit, f"context_management.edits.{i}") for i, edit in enumerate(edits)]


def _edit(edit: Any, where: str) -> Edit:
    if not isinstance(edit, dict):
        raise BadRequest(f"{where}: expected an object")
    kind = edit.get("type")
    if kind == CLEAR_THINKING:
        _only(edit, where, {"type", "keep"})
        keep = edit.get("keep")
        if keep is None:
            return ThinkingEdit(DEFAULT_KEEP_THINKING_TURNS)
        if keep == "all":
            return ThinkingEdit(None)
        return ThinkingEdit(_amount(keep, f"{where}.keep", "thinking_turns"))
    if kind == CLEAR_TOOL_USES:
        _only(edit, where, {"type", "trigger", "keep", "clear_at_least", "exclude_tools",
                            "clear_tool_inputs"})
        return ToolUsesEdit(
            trigger=_amount(edit.get("trigger"), f"{where}.trigger", "input_tokens",
                            DEFAULT_TRIGGER),
            keep=_amount(edit.get("keep"), f"{where}.keep", "tool_uses", DEFAULT_KEEP_TOOL_USES),
            clear_at_least=_amount(edit.get("clear_at_least"), f"{where}.clear_at_least",
                                   "input_tokens", 0),
            exclude=frozenset(_names(edit.get("exclude_tools"), f"{where}.exclude_tools")),
            clear_inputs=_clear_inputs(edit.get("clear_tool_inputs"), where))
    raise BadRequest(f"{where}.type: must be one of {CLEAR_TOOL_USES}, {CLEAR_THINKING}")


def _only(edit: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in edit:
        if key not in allowed:
            raise BadRequest(f"{where}.{key}: Extra inputs are not permitted")


def _amount(value: Any, where: str, unit: str, default: int = 0) -> int:
    """`{"type": unit, "value": n}` (n ≥ 0) as n; absent -> the default."""
    if value is None:
        return default
    if not isinstance(value, dict) or value.get("type") != unit:
        raise BadRequest(f"{where}: must be {{\"type\": \"{unit}\", \"value\": <integer>}}")
    n = value.get("value")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise BadRequest(f"{where}.value: must be a non-negative integer")
    return n


def _names(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{where}: must be an array of tool names")
    return value


def _clear_inputs(value: Any, where: str) -> bool | frozenset[str]:
    if value is None or isinstance(value, bool):
        return bool(value)
    return frozenset(_names(value, f"{where}.clear_tool_inputs"))


def apply_edits(messages: list[dict[str, Any]], edits: list[Edit],
                estimate: int) -> list[dict[str, Any]]:
    """Apply the edits in order to the native messages (in place); the applied_edits list."""
    applied: list[dict[str, Any]] = []
    for edit in edits:
        if isinstance(edit, ThinkingEdit):
            turns, chars = clear_thinking(messages, edit)
            applied.append({"type": CLEAR_THINKING, "cleared_thinking_turns": turns,
                            "cleared_input_tokens": chars // 4})
        else:
            uses, chars = clear_tool_uses(messages, edit, estimate)
            applied.append({"type": CLEAR_TOOL_USES, "cleared_tool_uses": uses,
                            "cleared_input_tokens": chars // 4})
        estimate -= applied[-1]["cleared_input_tokens"]
    return applied


def clear_thinking(messages: list[dict[str, Any]], edit: ThinkingEdit) -> tuple[int, int]:
    """Drop thinking from all but the last `keep` assistant turns that have it."""
    if edit.keep is None:
        return 0, 0
    thinking = [m for m in messages if m.get("role") == "assistant" and m.get("thinking")]
    old = thinking[: max(len(thinking) - edit.keep, 0)]
    chars = sum(len(m.pop("thinking")) for m in old)
    return len(old), chars


def clear_tool_uses(messages: list[dict[str, Any]], edit: ToolUsesEdit,
                    estimate: int) -> tuple[int, int]:
    """Past the trigger, clear the oldest tool results but the last `keep` (and excluded tools).

    Nothing is cleared when the context is under the trigger or when clearing all that may be
    cleared would free fewer than `clear_at_least` tokens (not worth losing the prompt cache).
    """
    if estimate < edit.trigger:
        return 0, 0
    results = [m for m in messages if m.get("role") == "tool" and m.get("content") != CLEARED
               and m.get("tool_name") not in edit.exclude]
    old = results[: max(len(results) - edit.keep, 0)]
    calls = _calls_by_id(messages)
    chars = sum(len(str(m.get("content", ""))) + _input_chars(calls.get(
        m.get("tool_call_id")), edit) for m in old)
    if not old or chars // 4 < edit.clear_at_least:
        return 0, 0
    for m in old:
        m["content"] = CLEARED
        m.pop("images", None)
        call = calls.get(m.get("tool_call_id"))
        if call is not None and _clears_input(call, edit):
            call["function"]["arguments"] = {}
    return len(old), chars


def _calls_by_id(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {call["id"]: call for m in messages for call in m.get("tool_calls") or []
            if call.get("id")}


def _clears_input(call: dict[str, Any], edit: ToolUsesEdit) -> bool:
    if isinstance(edit.clear_inputs, frozenset):
        return call["function"]["name"] in edit.clear_inputs
    return edit.clear_inputs


def _input_chars(call: dict[str, Any] | None, edit: ToolUsesEdit) -> int:
    if call is None or not _clears_input(call, edit):
        return 0
    return len(json.dumps(call["function"]["arguments"]))
