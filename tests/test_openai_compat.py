"""The pure /v1 conversions: OpenAI requests -> native bodies, native objects -> OpenAI JSON/SSE."""

from __future__ import annotations

import json

import pytest

from bridge.errors import BadRequest
from bridge.wire.limits import Limits
from bridge.wire.openai_in import chat_to_native, completion_to_native, embeddings_check
from bridge.wire.openai_out import ChatWriter, CompletionWriter, model_object
from bridge.wire.schemas import parse_chat

CALL = {"id": "call_abcdEFGH", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_chat_request_mapping():
    body = {"model": "m", "max_tokens": 5, "stop": "END", "seed": 3, "presence_penalty": 0.5,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "reasoning_effort": "xhigh",
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"},
                                             {"type": "image_url", "image_url": {
                                                 "url": "data:image/png;base64,QUJD"}}]},
                {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning": "hmm"},
                {"role": "tool", "tool_call_id": "call_abcdEFGH", "content": "sunny"}]}
    native = chat_to_native(body)
    assert native["options"] == {"temperature": 1.0, "top_p": 1.0, "num_predict": 5, "seed": 3,
                                 "presence_penalty": 0.5, "stop": ["END"]}
    assert (native["format"] == {"type": "object"} and native["think"] == "max"
            and native["stream"] is False)
    system, user, assistant, tool = native["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert user == {"role": "user", "content": "look", "images": ["QUJD"]}
    assert assistant["thinking"] == "hmm" and assistant["tool_calls"] == [
        {"id": "call_abcdEFGH", "function": {"index": 0, "name": "get_weather",
                                             "arguments": {"city": "Paris"}}}]
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "call_abcdEFGH",
                    "tool_name": "get_weather"}
    req = parse_chat(native, Limits())  # the native parser accepts what the conversion produces
    assert req.messages[3].tool_name == "get_weather" and req.options.num_predict == 5


@pytest.mark.parametrize("body,message", [
    ({"model": "m", "messages": []}, "[] is too short - 'messages'"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url":
                                                               {"url": "https://x/y.png"}}]}]},
     "invalid image input"),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{"}}]}]},
     "invalid tool call arguments in message at index 0"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3},
     "invalid type for 'stop' field: expected a string or an array of strings"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
     "json: cannot unmarshal string into Go struct field ChatCompletionRequest.temperature "
     "of type float64"),
])
def test_chat_request_errors(body, message):
    with pytest.raises(BadRequest) as err:
        chat_to_native(body)
    assert err.value.message == message


def test_completion_and_embeddings_requests():
    assert completion_to_native({"model": "m", "prompt": "hi", "max_tokens": 2,
                                 "stream": True}) == {
        "model": "m", "prompt": "hi", "suffix": "", "stream": True,
        "options": {"temperature": 1.0, "top_p": 1.0, "num_predict": 2}}
    with pytest.raises(BadRequest):
        completion_to_native({"model": "m", "prompt": ["a", "b"]})
    assert embeddings_check({"model": "e", "input": ""}) == "e"
    for bad in ({"model": "e", "input": []}, {"model": "e", "input": [1, 2]},
                {"model": "e", "input": "x", "encoding_format": "hex"}):
        with pytest.raises(BadRequest):
            embeddings_check(bad)


def events(stream) -> list:
    out = list(stream)
    assert out[-1] == "data: [DONE]\n\n" and all(e.startswith("data: ") and e.endswith("\n\n")
                                                 for e in out)
    return [json.loads(e[6:]) for e in out[:-1]]


def test_chat_stream_splits_reasoning_and_reports_tool_calls():
    call = {"id": "call_abcdEFGH", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    lines = [{"message": {"role": "assistant", "content": "x", "thinking": "t"}, "done": False},
             {"message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False},
             {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
              "prompt_eval_count": 4, "eval_count": 6}]
    out = events(ChatWriter("m", include_usage=True).events(lines))
    deltas = [e["choices"][0]["delta"] for e in out if e["choices"]]
    assert deltas[:2] == [{"role": "assistant", "reasoning": "t"}, {"content": "x"}]
    assert deltas[2]["tool_calls"] == [{"id": "call_abcdEFGH", "index": 0, "type": "function",
                                        "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert out[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    assert out[-1]["choices"] == [] and out[-1]["usage"] == {"prompt_tokens": 4,
                                                               "completion_tokens": 6,
                                                               "total_tokens": 10}
    error = events(ChatWriter("m").events([{"error": "boom"}]))
    assert error == [{"error": {"message": "boom", "type": "api_error", "param": None,
                                "code": None}}]


def test_completion_writer_objects():
    final = {"response": "abc", "done": True, "done_reason": "length", "prompt_eval_count": 1,
             "eval_count": 3}
    whole = CompletionWriter("m").completion(final)
    assert whole["choices"] == [{"text": "abc", "index": 0, "logprobs": None,
                                 "finish_reason": "length"}]
    assert whole["id"].startswith("cmpl-") and whole["usage"]["total_tokens"] == 4
    out = events(CompletionWriter("m", include_usage=True).events(
        [{"response": "a", "done": False}, final]))
    assert [e["usage"] for e in out[:2]] == [
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}] * 2
    assert out[-1]["choices"] == [] and out[-1]["usage"]["total_tokens"] == 4


def test_model_objects():
    entry = {"name": "alice/tool:7b", "model": "alice/tool:7b",
             "modified_at": "2024-06-01T12:00:00Z"}
    assert model_object(entry) == {"id": "alice/tool:7b", "object": "model", "created": 1717243200,
                                   "owned_by": "alice"}
    assert model_object({"name": "llama3.2:latest"})["owned_by"] == "library"
