"""The pure Anthropic conversions: Messages requests -> native bodies,
native objects -> Messages JSON/SSE."""

from __future__ import annotations

import json
import re

import pytest

from bridge.errors import BadRequest, Unsupported
from bridge.wire.anthropic_in import messages_check, messages_to_native
from bridge.wire.anthropic_out import MessagesWriter, anthropic_error
from bridge.wire.limits import Limits
from bridge.wire.schemas import parse_chat

PNG = "iVBORw0KGgo="
WEATHER = {"name": "get_weather", "description": "Current weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object"}}
Q = [{"role": "user", "content": "hi"}]


def body(**extra):
    return {"model": "m", "max_tokens": 100, "messages": Q, **extra}


def test_request_mapping_folds_blocks_into_native_messages():
    plan = messages_to_native(body(
        system=[{"type": "text", "text": "Be brief. ", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be kind."}],
        temperature=0.2, top_k=5, stop_sequences=["###"], tools=[WEATHER], stream=True,
        metadata={"user_id": "u-1"}, service_tier="auto",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Look "},
                                         {"type": "text", "text": "here"},
                                         {"type": "image", "source": {
                                             "type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom",
                 "is_error": True},
                {"type": "text", "text": "and now?"}]}]))
    native = plan.native
    assert native["options"] == {"num_predict": 100, "temperature": 0.2, "top_k": 5,
                                 "stop": ["###"]}
    assert native["stream"] is True and "think" not in native and "format" not in native
    assert native["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": WEATHER["input_schema"]}}]
    system, user, assistant, result, failed, follow = native["messages"]
    assert system == {"role": "system", "content": "Be brief. Be kind."}
    assert user == {"role": "user", "content": "Look here", "images": [PNG]}
    assert assistant == {
        "role": "assistant", "content": "Checking.", "thinking": "hmm", "tool_calls": [
        {"id": "toolu_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert result == {"role": "tool", "content": "sunny", "tool_call_id": "toolu_1",
                      "tool_name": "get_weather"}
    assert failed["content"] == "Error: boom"  # is_error reaches the model as text
    assert follow == {"role": "user", "content": "and now?"}
    assert plan.user_id == "u-1" and plan.forced == [] and plan.max_calls is None
    req = parse_chat(native, Limits())  # the native parser accepts what the conversion produces
    assert req.messages[3].tool_name == "get_weather" and req.options.top_k == 5


def test_no_defaults_are_invented():
    native = messages_to_native(body()).native
    assert (native["options"] == {"num_predict": 100} and native["messages"] == Q
            and native["stream"] is False)


@pytest.mark.parametrize("choice,forced,tools,max_calls", [
    ({"type": "auto"}, [], 2, None),
    ({"type": "auto", "disable_parallel_tool_use": True}, [], 2, 1),
    ({"type": "any"}, ["get_weather", "get_time"], 2, None),
    ({"type": "tool", "name": "get_time"}, ["get_time"], 2, None),
    ({"type": "none"}, [], 0, None),
])
def test_tool_choice(choice, forced, tools, max_calls):
    plan = messages_to_native(body(tools=[WEATHER, CLOCK], tool_choice=choice))
    assert (plan.forced == forced and len(plan.native.get("tools", [])) == tools
            and plan.max_calls == max_calls)


@pytest.mark.parametrize("thinking,extra,think,show", [
    ({"type": "enabled", "budget_tokens": 1024}, {"max_tokens": 2048}, True, True),
    ({"type": "enabled", "budget_tokens": 1024, "display": "omitted"}, {"max_tokens": 2048}, True,
     False),
    ({"type": "adaptive"}, {}, True, True),
    # the budget only switches thinking on, as Ollama: absent, small or past max_tokens
    ({"type": "enabled"}, {}, True, True),
    ({"type": "enabled", "budget_tokens": 100}, {"max_tokens": 50}, True, True),
    ({"type": "disabled"}, {"output_config": {"effort": "high"}}, False, True),
    (None, {"output_config": {"effort": "xhigh"}}, "high", True),
])
def test_thinking(thinking, extra, think, show):
    plan = messages_to_native({**body(**extra), **({"thinking": thinking} if thinking else {})})
    assert plan.native["think"] == think and plan.show_thinking is show


def test_output_config_format_is_the_native_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    plan = messages_to_native(body(output_config={
        "format": {"type": "json_schema", "schema": schema}}))
    assert plan.native["format"] == schema


@pytest.mark.parametrize("request_body,kind,message", [
    ({"max_tokens": 5, "messages": Q}, BadRequest, "model is required"),
    ({"model": "m", "messages": Q}, BadRequest, "max_tokens is required and must be positive"),
    ({"model": "m", "max_tokens": 0, "messages": Q}, BadRequest,
     "max_tokens is required and must be positive"),
    ({"model": "m", "max_tokens": 5}, BadRequest, "messages is required"),
    (body(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "http://x"}}]}]),
     BadRequest, "invalid image source type: url. Only base64 images are supported."),
    (body(messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "data": "@@"}}]}]),
     BadRequest, None),
    (body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "f",
                                                       "input": {}}]}]),
     BadRequest, "tool_use block missing required 'id' field"),
    (body(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
     Unsupported, None),
    (body(messages=[{"role": "system", "content": "x"}]), BadRequest, None),
    (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), Unsupported, None),
    (body(tools=[{"name": "f", "input_schema": "x"}]), BadRequest,
     'invalid input_schema for tool "f": must be a JSON schema object'),
    (body(tool_choice={"type": "any"}), BadRequest, "tool_choice.type 'any' needs tools"),
    (body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), BadRequest, None),
    (body(thinking={"type": "enabled", "budget_tokens": "lots"}), BadRequest,
     "thinking.budget_tokens: must be a non-negative integer"),
    (body(temperature=1.5), BadRequest, "temperature: must be between 0 and 1"),
    (body(stop_sequences=["ok", ""]), BadRequest, None),
    (body(metadata={"user_id": "u", "team": "x"}), BadRequest,
     "metadata.team: Extra inputs are not permitted"),
    (body(service_tier="priority"), BadRequest, None),
    (body(container="c_1"), Unsupported, "container: not supported by mlx-bridge for MLX models"),
    (body(mcp_servers=[{"url": "http://x"}]), Unsupported, None),
    (body(output_config={"format": {"type": "json_schema"}}), BadRequest, None),
])
def test_refused_requests(request_body, kind, message):
    with pytest.raises(kind) as err:
        messages_to_native(request_body)
    assert type(err.value) is kind
    if message:
        assert err.value.message == message


def test_count_tokens_needs_no_max_tokens():
    assert messages_check({"model": "m", "messages": Q}, counting=True) == "m"
    assert messages_to_native({"model": "m", "messages": Q}, counting=True).native["options"] == {}


def final(reason="stop", stop="", **msg):
    return {"message": {"role": "assistant", "content": "", **msg}, "done": True,
            "done_reason": reason,
            "prompt_eval_count": 7, "eval_count": 3, "stop_sequence": stop}


CALL = {"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                     "arguments": {"city": "Paris"}}}


def test_message_object():
    out = MessagesWriter("m").message(final(content="Hi", thinking="hmm", tool_calls=[CALL]))
    assert out["id"].startswith("msg_") and len(out["id"]) == 28
    assert out["type"] == "message" and out["role"] == "assistant" and out["model"] == "m"
    assert out["content"] == [{"type": "thinking", "signature": "", "thinking": "hmm"},
                              {"type": "text", "text": "Hi"},
                              {"type": "tool_use", "id": "call_1", "name": "get_weather",
                               "input": {"city": "Paris"}}]
    assert out["stop_reason"] == "tool_use" and out["stop_sequence"] is None
    assert out["usage"] == {"input_tokens": 7, "output_tokens": 3}
    stopped = MessagesWriter("m").message(final(stop="###", content="Hi"))
    assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == "###"
    assert MessagesWriter("m").message(final("length"))["stop_reason"] == "max_tokens"
    assert MessagesWriter("m").message(final())["content"] == [{"type": "text", "text": ""}]
    two = MessagesWriter("m", max_calls=1).message(
        final(tool_calls=[CALL, {**CALL, "id": "call_2"}]))
    assert [b["id"] for b in two["content"]] == ["call_1"]
    hidden = MessagesWriter("m", show_thinking=False).message(final(thinking="secret", content="x"))
    assert hidden["content"][0] == {"type": "thinking", "signature": "", "thinking": ""}


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for frame in text.strip().split("\n\n"):
        head, data = frame.split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[6:])
        assert payload["type"] == head[7:]  # the event line names the payload's type
        events.append((head[7:], payload))
    return events


def chunk(**msg):
    return {"message": {"role": "assistant", "content": "", **msg}, "done": False}


def test_event_stream():
    lines = [chunk(thinking="hm"), chunk(thinking="m"), chunk(content="Hel"), chunk(content="lo"),
             chunk(tool_calls=[CALL]), final()]
    events = parse_sse("".join(MessagesWriter("m", input_estimate=5).events(lines)))
    assert [e for e, _ in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"] == {"input_tokens": 5, "output_tokens": 0}
    assert events[2][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}
    assert events[3][1]["delta"] == {"type": "thinking_delta", "thinking": "hm"}
    assert events[7][1] == {"type": "content_block_delta", "index": 1,
                            "delta": {"type": "text_delta", "text": "Hel"}}
    assert events[10][1]["content_block"] == {"type": "tool_use", "id": "call_1",
                                              "name": "get_weather", "input": {}}
    assert events[11][1]["delta"] == {"type": "input_json_delta",
                                      "partial_json": '{"city": "Paris"}'}
    assert events[13][1] == {"type": "message_delta",
                             "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 7, "output_tokens": 3}}


def test_event_stream_error_and_empty_output():
    events = parse_sse("".join(MessagesWriter("m").events([chunk(content="a"),
                                                           {"error": "engine died"}])))
    assert events[-1] == ("error", {"type": "error",
                                    "error": {"type": "api_error", "message": "engine died"}})
    empty = parse_sse("".join(MessagesWriter("m").events([final(stop="##")])))
    assert [e for e, _ in empty][2:] == ["content_block_start", "content_block_stop",
                                         "message_delta", "message_stop"]
    assert empty[4][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "##"}


def test_error_shape():
    assert anthropic_error(404, "model 'x' not found", "abc") == {
        "type": "error", "error": {"type": "not_found_error", "message": "model 'x' not found"},
        "request_id": "req_000000000000000000000abc"}
    # Anthropic's shape, req_ and 24 hex digits, whatever the bridge's request id looks like
    assert re.fullmatch(r"req_[0-9a-f]{24}",
                        anthropic_error(400, "x", "my id from a header")["request_id"])
    assert anthropic_error(529, "busy")["error"]["type"] == "overloaded_error"
    assert anthropic_error(500, "boom")["error"]["type"] == "api_error"
