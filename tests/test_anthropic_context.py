"""Anthropic context editing (`context_management`, which Claude Code sends on every request).

Unit tests of bridge.wire.anthropic_context on native messages, then the real server through the
official `anthropic` SDK: the edits shrink the prompt the model reads (count_tokens and usage)
and the response reports them as `context_management.applied_edits`.
"""

from __future__ import annotations

import anthropic
import pytest
import requests

from bridge.errors import BadRequest
from bridge.wire.anthropic_context import (
    CLEARED,
    ThinkingEdit,
    ToolUsesEdit,
    apply_edits,
    parse_edits,
)
from bridge.wire.anthropic_in import messages_to_native

BIG = "x" * 4000  # ~1000 estimated tokens of tool output
SMALL = "the file says hello " * 10  # what fits the tiny model's context


def tool_history(n: int, output: str = BIG) -> list[dict]:
    """n rounds of assistant tool_use (with thinking) + user tool_result, then a question."""
    messages: list[dict] = [{"role": "user", "content": "Look around."}]
    for i in range(n):
        messages.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"plan {i} " * 50, "signature": ""},
            {"type": "tool_use", "id": f"call_{i}", "name": "read" if i else "keep_me",
             "input": {"path": f"/f{i}"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"call_{i}", "content": output}]})
    messages.append({"role": "user", "content": "Summarise."})
    return messages


def body(**extra) -> dict:
    return {"model": "tiny", "max_tokens": 4, "messages": tool_history(5), **extra}


def test_claude_code_shape_is_accepted_not_refused():
    plan = messages_to_native(body(context_management={"edits": [
        {"type": "clear_thinking_20251015", "keep": "all"}]}))
    assert plan.context == {"applied_edits": [
        {"type": "clear_thinking_20251015", "cleared_thinking_turns": 0,
         "cleared_input_tokens": 0}]}
    assert all(m.get("thinking") for m in plan.native["messages"] if m["role"] == "assistant")


def test_clear_thinking_keeps_the_last_turns():
    plan = messages_to_native(body(context_management={"edits": [
        {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 2}}]}))
    kept = [bool(m.get("thinking")) for m in plan.native["messages"] if m["role"] == "assistant"]
    assert kept == [False, False, False, True, True]
    (edit,) = plan.context["applied_edits"]
    assert edit["cleared_thinking_turns"] == 3 and edit["cleared_input_tokens"] > 0


def test_clear_tool_uses_past_the_trigger_keeps_recent_and_excluded():
    edit = {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 100},
            "keep": {"type": "tool_uses", "value": 2}, "exclude_tools": ["keep_me"],
            "clear_tool_inputs": True}
    plan = messages_to_native(body(context_management={"edits": [edit]}))
    tools = [m for m in plan.native["messages"] if m["role"] == "tool"]
    assert [m["content"] == CLEARED for m in tools] == [False, True, True, False, False]
    calls = [m["tool_calls"][0] for m in plan.native["messages"] if m.get("tool_calls")]
    assert [c["function"]["arguments"] for c in calls][:3] == [{"path": "/f0"}, {}, {}]
    (applied,) = plan.context["applied_edits"]
    assert applied["cleared_tool_uses"] == 2 and applied["cleared_input_tokens"] >= 2000


def test_clear_tool_uses_under_the_trigger_or_below_clear_at_least_does_nothing():
    for edit in ({"type": "clear_tool_uses_20250919"},  # default trigger 100k tokens
                 {"type": "clear_tool_uses_20250919",
                  "trigger": {"type": "input_tokens", "value": 1},
                  "clear_at_least": {"type": "input_tokens", "value": 10**6}}):
        plan = messages_to_native(body(context_management={"edits": [edit]}))
        assert not any(m["content"] == CLEARED for m in plan.native["messages"])
        assert plan.context["applied_edits"][0]["cleared_tool_uses"] == 0


@pytest.mark.parametrize("value, needle", [
    ("x", "context_management: must be an object"),
    ({"edits": [{"type": "clear_everything"}]}, "context_management.edits.0.type"),
    ({"edits": [{"type": "clear_thinking_20251015", "keep": 3}]}, "edits.0.keep"),
    ({"edits": [{"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses",
                                                              "value": -1}}]}, "keep.value"),
    ({"edits": [], "other": 1}, "context_management.other"),
])
def test_bad_context_management_is_a_400(value, needle):
    with pytest.raises(BadRequest, match=needle.replace(".", r"\.")):
        parse_edits(value)


def test_apply_edits_in_order_updates_the_estimate():
    messages = [{"role": "assistant", "content": "", "thinking": "t" * 400},
                {"role": "assistant", "content": "", "thinking": "u" * 400,
                 "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": {}}}]},
                {"role": "tool", "content": "r" * 800, "tool_call_id": "a", "tool_name": "f"}]
    applied = apply_edits(messages, [ThinkingEdit(0), ToolUsesEdit(150, 0, 0, frozenset(),
                                                                   False)], 400)
    # 400 - 200 cleared thinking tokens = 200 >= the trigger of 150: the tool result goes too
    assert [a["cleared_input_tokens"] for a in applied] == [200, 200]
    assert messages[2]["content"] == CLEARED and "thinking" not in messages[0]


@pytest.fixture(scope="module")
def client(protocol_bridges) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=protocol_bridges[0], api_key="x", max_retries=0)


CLEAR_ALL = {"edits": [{"type": "clear_tool_uses_20250919",
                        "trigger": {"type": "input_tokens", "value": 10},
                        "keep": {"type": "tool_uses", "value": 0}},
                       {"type": "clear_thinking_20251015",
                        "keep": {"type": "thinking_turns", "value": 0}}]}


def test_real_server_edits_shrink_the_prompt_and_are_reported(client):
    kw = {"model": "tiny", "max_tokens": 2, "messages": tool_history(3, SMALL)}
    plain = client.messages.count_tokens(model="tiny", messages=kw["messages"])
    edited = client.messages.count_tokens(model="tiny", messages=kw["messages"],
                                          extra_body={"context_management": CLEAR_ALL})
    assert edited.input_tokens < plain.input_tokens - 30
    reply = client.messages.create(**kw, extra_body={"context_management": CLEAR_ALL,
                                                     "temperature": 0})
    assert reply.usage.input_tokens == edited.input_tokens
    applied = reply.model_extra["context_management"]["applied_edits"]
    assert [a["type"] for a in applied] == ["clear_tool_uses_20250919", "clear_thinking_20251015"]
    assert applied[0]["cleared_tool_uses"] == 3 and applied[1]["cleared_thinking_turns"] == 3


def test_real_server_stream_reports_edits_in_message_delta(protocol_bridges):
    r = requests.post(protocol_bridges[0] + "/v1/messages", timeout=60, json={
        "model": "tiny", "max_tokens": 2, "stream": True, "messages": tool_history(2, SMALL),
        "context_management": CLEAR_ALL})
    assert r.status_code == 200
    delta = [line for line in r.text.splitlines() if '"message_delta"' in line]
    assert delta and '"applied_edits"' in delta[0] and '"cleared_tool_uses":2' in delta[0]


def test_real_server_bad_edit_is_an_anthropic_400(protocol_bridges):
    r = requests.post(protocol_bridges[0] + "/v1/messages", timeout=30, json={
        "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "context_management": {"edits": [{"type": "nope"}]}})
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
