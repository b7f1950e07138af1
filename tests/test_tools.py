"""Tool calls: the parser on text, and real generations through /api/chat and /v1.

The `tools` model is a scripted tiny model (tests/scripted_model.py) with a Qwen2.5-like
template, so mlx-lm picks its `json_tools` parser; it answers with one `<tool_call>`, and after
a tool result it answers from the result's text. The `tiny` model has no parser mlx-lm knows:
its tool calls are read as bare JSON, forced here by a schema-constrained `format`.
"""

from __future__ import annotations

import json
import re

import pytest

from bridge.serving.toolcalls import ToolCallExtractor, ToolFormat, parse_all

from .scripted_model import ANSWER, CALL, WEATHER, scripted_models, start_app

CALL_ID = re.compile(r"call_[A-Za-z0-9]{8}")
Q = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
JSON_TOOLS = ToolFormat("<tool_call>", "</tool_call>", lambda text, tools: json.loads(text))


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tools")
    app = start_app(root, scripted_models(root, tiny_model_dir))
    yield app.test_client()
    app.extensions["bridge"].stop()


def stream_through(ex: ToolCallExtractor, text: str, size: int) -> tuple[str, list[dict]]:
    content, calls = "", []
    for i in range(0, len(text), size):
        c, k = ex.feed(text[i:i + size])
        content, calls = content + c, calls + k
    c, k = ex.flush()
    return content + c, calls + k


@pytest.mark.parametrize("size", [1, 3, 11, 1000])
def test_tagged_calls_come_out_whole_for_any_chunking(size):
    text = (f'Checking.<tool_call>{CALL}</tool_call>'
            f'<tool_call>{{"name": "f", "arguments": {{}}}}</tool_call>')
    content, calls = stream_through(ToolCallExtractor(JSON_TOOLS, [WEATHER_TOOL]), text, size)
    assert content == "Checking."
    assert [c["function"] for c in calls] == [
        {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
        {"index": 1, "name": "f", "arguments": {}}]
    assert all(CALL_ID.fullmatch(c["id"]) for c in calls)


def test_malformed_or_unclosed_calls_stay_content():
    assert parse_all("<tool_call>{not json}</tool_call> ok", JSON_TOOLS, None) == (
        "<tool_call>{not json}</tool_call> ok", [])
    content, calls = parse_all(f"<tool_call>{CALL}", JSON_TOOLS, None)  # EOS before the end marker
    assert content == "" and calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert parse_all("<tool_call>{", JSON_TOOLS, None) == ("<tool_call>{", [])
    assert parse_all("a <tool_ca", JSON_TOOLS, None) == ("a <tool_ca", [])


def test_bare_json_calls_need_a_known_tool_name():
    generic = ToolFormat()
    llama = '{"name": "get_weather", "parameters": {"city": "Rome"}}'
    calls = stream_through(ToolCallExtractor(generic, [WEATHER_TOOL]), llama, 4)[1]
    assert calls[0]["function"] == {
        "index": 0, "name": "get_weather", "arguments": {"city": "Rome"}}
    other = '{"name": "Bob", "age": 3}'
    assert stream_through(ToolCallExtractor(generic, [WEATHER_TOOL]), other, 4) == (other, [])
    assert stream_through(ToolCallExtractor(generic, [WEATHER_TOOL]), "plain text", 2) == (
        "plain text", [])


def test_mistral_style_marker_without_end():
    fmt = ToolFormat("[TOOL_CALLS]", "", lambda text, tools: json.loads(text))
    content, calls = parse_all('[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}]', fmt, None)
    assert content == "" and calls[0]["function"]["arguments"] == {"x": 1}


def test_capabilities_say_tools_only_when_the_template_uses_them(client):
    caps = {name: client.post("/api/show", json={"model": name}).get_json()["capabilities"]
            for name in ("tools", "think", "tiny")}
    assert "tools" in caps["tools"] and "tools" in caps["tiny"] and "tools" not in caps["think"]


def test_native_chat_returns_the_call_with_object_arguments(client):
    out = client.post("/api/chat", json={"model": "tools", "messages": Q, "tools": [WEATHER_TOOL],
                                         "stream": False}).get_json()
    (call,) = out["message"]["tool_calls"]
    assert CALL_ID.fullmatch(call["id"])
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert out["message"]["content"] == "" and out["done_reason"] == "stop"


def test_streamed_call_arrives_whole_in_one_chunk(client):
    resp = client.post("/api/chat", json={"model": "tools", "messages": Q, "tools": [WEATHER_TOOL]})
    lines = [json.loads(x) for x in resp.get_data(as_text=True).splitlines()]
    with_calls = [x for x in lines if x["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not with_calls[0]["done"]
    assert with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert "<tool_call>" not in resp.get_data(as_text=True)
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


def test_without_tools_the_text_is_left_alone(client):
    out = client.post("/api/chat",
                      json={"model": "tools", "messages": Q, "stream": False}).get_json()
    assert out["message"]["content"] == f"<tool_call>{CALL}</tool_call>"
    assert "tool_calls" not in out["message"]


def test_tool_result_is_fed_back(client):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [*Q, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": WEATHER, "tool_name": "get_weather"}]
    out = client.post("/api/chat", json={"model": "tools", "messages": messages,
                                         "tools": [WEATHER_TOOL], "stream": False}).get_json()
    assert out["message"] == {"role": "assistant", "content": ANSWER}


def test_model_without_tool_support_is_refused(client):
    resp = client.post("/api/chat", json={"model": "think", "messages": Q, "tools": [WEATHER_TOOL]})
    assert resp.status_code == 400 and resp.get_json() == {
        "error": "think:latest does not support tools"}
    v1 = client.post("/v1/chat/completions",
                     json={"model": "think", "messages": Q, "tools": [WEATHER_TOOL]})
    assert (v1.status_code == 400
            and v1.get_json()["error"]["message"] == "think:latest does not support tools")


def test_bare_json_call_from_a_constrained_random_model(client):
    """tiny has random weights and no parser: a schema forces a call-shaped object, read as a
    call."""
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": "get_weather"},
                             "arguments": {"type": "object", "additionalProperties": False,
                                           "required": ["city"],
                                           "properties": {"city": {"type": "string",
                                                                   "maxLength": 8}}}}}
    out = client.post("/api/chat", json={"model": "tiny", "messages": Q, "tools": [WEATHER_TOOL],
                                         "format": schema, "stream": False,
                                         "options": {"temperature": 0}}).get_json()
    (call,) = out["message"]["tool_calls"]
    assert (call["function"]["name"] == "get_weather"
            and isinstance(call["function"]["arguments"]["city"], str))
    assert out["message"]["content"] == ""


def test_v1_tool_calls_and_tool_results(client):
    body = {"model": "tools", "messages": Q, "tools": [WEATHER_TOOL]}
    out = client.post("/v1/chat/completions", json=body).get_json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}  # a JSON string in /v1
    follow = [*Q, {"role": "assistant", "content": None, "tool_calls": [call]},
              {"role": "tool", "tool_call_id": call["id"], "content": WEATHER}]
    answer = client.post("/v1/chat/completions",
                         json={**body, "messages": follow}).get_json()["choices"][0]
    assert answer["message"]["content"] == ANSWER and answer["finish_reason"] == "stop"
