"""The pure Responses conversions: requests -> native bodies, native objects -> response
JSON/SSE."""

from __future__ import annotations

import json

import pytest

from bridge.errors import BadRequest, Unsupported
from bridge.wire.limits import Limits
from bridge.wire.responses_in import responses_to_native
from bridge.wire.responses_out import ResponsesWriter
from bridge.wire.schemas import parse_chat

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
CLOCK = {"type": "function", "name": "get_time"}


def body(**extra):
    return {"model": "m", "input": "hi", **extra}


def test_input_items_become_native_messages():
    plan = responses_to_native(body(
        instructions="Be brief.", max_output_tokens=50, top_p=0.5, tools=[WEATHER], stream=True,
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather "},
                {"type": "input_text", "text": "in Paris?"},
                {"type": "input_image", "image_url": "data:image/png;base64,QUJD"}]},
            {"type": "reasoning", "id": "rs_1",
             "summary": [{"type": "summary_text", "text": "hmm"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]))
    native = plan.native
    assert native["options"] == {"temperature": 1.0, "top_p": 0.5, "num_predict": 50}
    assert native["stream"] is True and native["truncate"] is False
    assert native["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": WEATHER["parameters"]}}]
    system, developer, user, assistant, tool = native["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert developer == {"role": "system", "content": "Answer in French."}
    assert user == {"role": "user", "content": "Weather in Paris?", "images": ["QUJD"]}
    assert assistant == {"role": "assistant", "content": "Checking.", "thinking": "hmm",
                         "tool_calls": [{"id": "call_1", "function": {
                             "name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "call_1",
                    "tool_name": "get_weather"}
    assert plan.echo["instructions"] == "Be brief." and plan.echo["tools"] == [WEATHER]
    assert plan.echo["top_p"] == 0.5 and plan.echo["max_output_tokens"] == 50
    assert parse_chat(native, Limits()).messages[4].tool_name == "get_weather"


def test_a_function_call_without_an_assistant_message_opens_one():
    native = responses_to_native(body(input=[
        {"role": "user", "content": "x"},
        {"type": "reasoning", "encrypted_content": "plan"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}])).native
    assert native["messages"][1] == {"role": "assistant", "content": "", "thinking": "plan",
                                     "tool_calls": [{"id": "c", "function": {"name": "f",
                                                                             "arguments": {}}}]}


@pytest.mark.parametrize("choice,forced,shown", [
    ("auto", [], 2), ("none", [], 0), ("required", ["get_weather", "get_time"], 2),
    ({"type": "function", "name": "get_time"}, ["get_time"], 2),
    ({"type": "allowed_tools", "mode": "required",
      "tools": [{"type": "function", "name": "get_time"}]}, ["get_time"], 1),
    ({"type": "allowed_tools", "mode": "auto",
      "tools": [{"type": "function", "name": "get_time"}]}, [], 1),
])
def test_tool_choice(choice, forced, shown):
    plan = responses_to_native(body(tools=[WEATHER, CLOCK], tool_choice=choice))
    assert plan.forced == forced and len(plan.native.get("tools", [])) == shown


def test_call_limits_formats_and_reasoning():
    assert responses_to_native(body(parallel_tool_calls=False)).max_calls == 1
    assert responses_to_native(body(max_tool_calls=3)).max_calls == 3
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "A", "schema": schema, "strict": True}
    plan = responses_to_native(body(text={"format": fmt},
                                    reasoning={"effort": "minimal", "summary": "auto"},
                                    truncation="auto", include=["reasoning.encrypted_content"]))
    assert (plan.native["format"] == schema and plan.native["think"] == "low"
            and plan.native["truncate"] is True)
    assert (plan.echo["text"] == {"format": fmt}
            and plan.echo["reasoning"] == {"effort": "minimal", "summary": "auto"})
    assert plan.encrypted_reasoning is True
    json_plan = responses_to_native(body(text={"format": {"type": "json_object"}}))
    assert json_plan.native["format"] == "json"
    assert responses_to_native(body(reasoning={"effort": "none"})).native["think"] is False


@pytest.mark.parametrize("request_body,kind,message", [
    ({"input": "x"}, BadRequest, "model is required"),
    (body(previous_response_id="resp_1"), Unsupported,
     "previous_response_id: responses are not stored (send the whole conversation in input)"),
    (body(conversation="conv_1"), Unsupported, None),
    (body(prompt={"id": "pmpt_1"}), Unsupported, None),
    (body(store=True), Unsupported, None),
    (body(background=True), Unsupported, None),
    (body(tools=[{"type": "web_search"}]), Unsupported, None),
    (body(tool_choice={"type": "web_search_preview"}), Unsupported, None),
    (body(tool_choice="required"), BadRequest, "tool_choice 'required' needs tools"),
    (body(include=["file_search_call.results"]), Unsupported, None),
    (body(top_logprobs=21), BadRequest, None),
    (body(service_tier="flex"), Unsupported, None),
    (body(text={"verbosity": "low"}), Unsupported, None),
    (body(reasoning={"effort": "huge"}), BadRequest,
     'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", "xhigh", '
     '"ultra", "max", or "none")'),
    (body(input=[{"type": "item_reference", "id": "msg_1"}]), Unsupported,
     'input[0]: unknown input item type: "item_reference"'),
    (body(input=[{"content": "x"}]), BadRequest, "input item missing required 'type' field"),
    (body(input=[{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
     Unsupported, "file inputs are not currently supported"),
    (body(input=[{"role": "user",
                  "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]),
     BadRequest,
     "image URLs are not currently supported, please use base64 encoded data instead"),
    (body(input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]),
     BadRequest, None),
    (body(input=[]), BadRequest, "input is required"),
    (body(temperature=3), BadRequest, None),
    (body(text={"format": {"type": "json_schema"}}), BadRequest, None),
])
def test_refused_requests(request_body, kind, message):
    with pytest.raises(kind) as err:
        responses_to_native(request_body)
    assert type(err.value) is kind
    if message:
        assert err.value.message == message


def final(reason="stop", **msg):
    return {"message": {"role": "assistant", "content": "", **msg}, "done": True,
            "done_reason": reason, "prompt_eval_count": 7, "eval_count": 3}


CALL = {"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                     "arguments": {"city": "Paris"}}}
ECHO = {"instructions": None, "tools": [], "tool_choice": "auto",
        "text": {"format": {"type": "text"}}}


def test_response_object():
    out = ResponsesWriter("m", ECHO).response(final(content="Hi", thinking="hmm",
                                                    tool_calls=[CALL]))
    assert out["object"] == "response" and out["status"] == "completed" and out["model"] == "m"
    assert out["id"].startswith("resp_") and out["store"] is False and out["tool_choice"] == "auto"
    reasoning, message, call = out["output"]
    assert (reasoning["type"] == "reasoning"
            and reasoning["summary"] == [{"type": "summary_text", "text": "hmm"}])
    assert "encrypted_content" not in reasoning
    assert message["content"] == [{"type": "output_text", "text": "Hi", "annotations": [],
                                   "logprobs": []}]
    assert {k: call[k] for k in ("type", "status", "call_id", "name", "arguments")} == {
        "type": "function_call", "status": "completed", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"city": "Paris"}'}
    assert out["usage"]["input_tokens"] == 7 and out["usage"]["total_tokens"] == 10
    cut = ResponsesWriter("m", ECHO).response(final("length", content="Hi"))
    # Cut by the token limit: `completed` all the same, as Ollama (spec §3b; OpenAI would say
    # `incomplete`), its text kept.
    assert (cut["status"] == "completed" and cut["incomplete_details"] is None
            and cut["completed_at"] is not None)
    assert cut["output"][0]["status"] == "completed"
    assert cut["output"][0]["content"][0]["text"] == "Hi"
    only_calls = ResponsesWriter("m", ECHO, max_calls=1).response(final(tool_calls=[CALL, CALL]))
    assert [o["type"] for o in only_calls["output"]] == ["function_call"]
    encrypted = ResponsesWriter("m", ECHO, encrypted_reasoning=True).response(final(thinking="t"))
    assert encrypted["output"][0]["encrypted_content"] == "t"


def parse_sse(text: str) -> list[dict]:
    events = []
    for frame in text.strip().split("\n\n"):
        head, data = frame.split("\n")
        payload = json.loads(data[6:])
        assert head == f"event: {payload['type']}"
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def chunk(**msg):
    return {"message": {"role": "assistant", "content": "", **msg}, "done": False}


def test_event_stream():
    lines = [chunk(thinking="h"), chunk(thinking="m"), chunk(content="Hel"), chunk(content="lo"),
             chunk(tool_calls=[CALL]), final()]
    events = parse_sse("".join(ResponsesWriter("m", ECHO).events(lines)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert (events[0]["response"]["status"] == "in_progress"
            and events[0]["response"]["usage"] is None)
    assert events[11]["delta"] == "Hel" and events[11]["output_index"] == 1
    assert events[13]["text"] == "Hello"
    assert events[18]["arguments"] == '{"city": "Paris"}' and events[18]["output_index"] == 2
    done = events[-1]["response"]
    assert done["status"] == "completed" and [o["type"] for o in done["output"]] == [
        "reasoning", "message", "function_call"]
    assert done["output"][1]["content"][0]["text"] == "Hello"


def test_event_stream_cut_and_failed():
    """A stream the token limit cut ends with `response.completed` (Ollama never sends
    `response.incomplete`; the openai SDK's stream helper needs `response.completed`)."""
    cut = parse_sse("".join(ResponsesWriter("m", ECHO).events([chunk(content="a"),
                                                               final("length")])))
    assert (cut[-1]["type"] == "response.completed"
            and cut[-1]["response"]["status"] == "completed")
    assert not [e for e in cut if e["type"] == "response.incomplete"]
    item_done = next(e for e in cut if e["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "completed"
    assert item_done["item"]["content"][0]["text"] == "a"
    failed = parse_sse("".join(ResponsesWriter("m", ECHO).events([chunk(content="a"),
                                                                  {"error": "engine died"}])))
    assert failed[-1]["type"] == "response.failed"
    assert failed[-1]["response"]["error"] == {"code": "server_error", "message": "engine died"}
    assert failed[-2]["type"] == "response.output_item.done"  # what was said is closed first
