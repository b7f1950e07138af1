"""/v1/messages through the official `anthropic` SDK against real `mlx-bridge serve` processes.

The bridge serves the tiny random model and the scripted `think` / `tools` models on MLX (see
tests/scripted_model.py); `up-only` lives only on its upstream, a second bridge process.
"""

from __future__ import annotations

import time

import anthropic
import jsonschema
import pytest
import requests

from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER

Q = [{"role": "user", "content": "What is the weather in Paris?"}]
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"]}
WEATHER_TOOL = {"name": "get_weather", "description": "Current weather in a city",
                "input_schema": CITY}
PNG = "iVBORw0KGgo="
# anthropic>=2 dropped temperature/top_p/top_k from its signatures; older clients send them
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def urls(protocol_bridges):
    return protocol_bridges


@pytest.fixture(scope="module")
def client(urls) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=urls[0], api_key="not-checked", max_retries=0)


def test_create_and_stream_agree(client):
    kw = {"model": "tiny", "messages": Q, "max_tokens": 10, **GREEDY}
    whole = client.messages.create(**kw)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == "tiny"
    assert (whole.id.startswith("msg_") and whole.stop_reason == "max_tokens"
            and whole.stop_sequence is None)
    assert whole.usage.output_tokens == 10 and whole.usage.input_tokens > 0
    (block,) = whole.content
    with client.messages.stream(**kw) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert (final.content[0].text == block.text
            and final.usage.input_tokens == whole.usage.input_tokens)
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in types and "content_block_stop" in types
    raw = requests.post(client.base_url.__str__().rstrip("/") + "/v1/messages", timeout=30,
                        json={**kw.pop("extra_body"), **kw, "stream": True}).text
    assert raw.startswith("event: message_start\ndata: ") and "event: ping\n" in raw


def pick_stop(text: str) -> tuple[str, int]:
    """A two-character piece of `text` (no replacement char) whose first occurrence is past
    the start."""
    for i in range(2, len(text) - 2):
        piece = text[i:i + 2]
        if "\ufffd" not in piece and piece.strip() and text.find(piece) == i:
            return piece, i
    raise AssertionError(f"no usable stop sequence in {text!r}")


def test_stop_sequences_report_the_match(client):
    kw = {"model": "tiny", "messages": Q, "max_tokens": 16, **GREEDY}
    text = client.messages.create(**kw).content[0].text
    stop, at = pick_stop(text)
    out = client.messages.create(**kw, stop_sequences=["never-in-the-output", stop])
    assert out.stop_reason == "stop_sequence" and out.stop_sequence == stop
    assert out.content[0].text == text[:at]
    with client.messages.stream(**kw, stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    never = client.messages.create(**kw, stop_sequences=["never-in-the-output"])
    assert never.stop_reason == "max_tokens"


def test_tool_use_round_trip(client):
    msg = client.messages.create(model="tools", max_tokens=100, messages=Q, tools=[WEATHER_TOOL])
    assert msg.stop_reason == "tool_use"
    (call,) = msg.content
    assert (call.type == "tool_use" and call.name == "get_weather"
            and call.input == {"city": "Paris"})
    with client.messages.stream(model="tools", max_tokens=100, messages=Q,
                                tools=[WEATHER_TOOL]) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas == ["input_json_delta"] and final.content[0].input == {"city": "Paris"}
    follow = [*Q, {"role": "assistant", "content": msg.content},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": WEATHER}]}]
    answer = client.messages.create(model="tools", max_tokens=100, messages=follow,
                                    tools=[WEATHER_TOOL])
    assert answer.stop_reason == "end_turn" and answer.content[0].text == ANSWER


def test_tool_choice_forces_a_call_by_constrained_decoding(client):
    """The random tiny model never writes a tool call by itself; tool_choice any/tool makes it."""
    kw = {"model": "tiny", "max_tokens": 100, "messages": Q, "tools": [WEATHER_TOOL], **GREEDY}
    free = client.messages.create(**kw)
    assert free.stop_reason != "tool_use" and all(b.type == "text" for b in free.content)
    forced = client.messages.create(**kw, tool_choice={"type": "tool", "name": "get_weather"})
    assert forced.stop_reason == "tool_use"
    (call,) = forced.content
    assert call.name == "get_weather"
    jsonschema.validate(call.input, CITY)
    with client.messages.stream(**{**kw, "extra_body": {"temperature": 0.9}},
                                tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].name == "get_weather"
    jsonschema.validate(final.content[-1].input, CITY)


def test_tool_choice_none_hides_the_tools(client):
    """The scripted model writes its <tool_call> text anyway; with no tools it stays text."""
    msg = client.messages.create(model="tools", max_tokens=100, messages=Q, tools=[WEATHER_TOOL],
                                 tool_choice={"type": "none"})
    assert msg.stop_reason == "end_turn" and [b.type for b in msg.content] == ["text"]
    assert "<tool_call>" in msg.content[0].text


def test_thinking(client):
    kw = {"model": "think", "max_tokens": 2048, "messages": Q}
    msg = client.messages.create(**kw, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert (msg.content[0].thinking == THOUGHT and msg.content[1].text == HELLO
            and msg.stop_reason == "end_turn")
    with client.messages.stream(**kw,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in deltas and final.content[0].thinking == THOUGHT
    off = client.messages.create(**kw, thinking={"type": "disabled"})
    assert [(b.type, b.text) for b in off.content] == [("text", HELLO)]
    # A model without thinking answers anyway (Ollama's relax_thinking: Claude Code always asks).
    plain = client.messages.create(model="tiny", max_tokens=1100, messages=Q,
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert plain.content and all(b.type == "text" for b in plain.content)


def test_count_tokens_is_the_real_prompt_length(client, tiny_model_dir):
    from transformers import AutoTokenizer

    kw = {"model": "tiny", "system": "Be brief.", "messages": Q}
    counted = client.messages.count_tokens(**kw).input_tokens
    assert counted == client.messages.create(**kw, max_tokens=1).usage.input_tokens
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *Q],
                                             tokenize=True, add_generation_prompt=True)
    # transformers 5: a BatchEncoding
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert counted == len(ids)
    with_tools = client.messages.count_tokens(**kw, tools=[WEATHER_TOOL]).input_tokens
    assert with_tools > counted  # the template writes the tools into the prompt


def test_errors_have_anthropic_shape(client, urls):
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="nope", max_tokens=5, messages=Q)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"] == {"type": "not_found_error",
                                       "message": "model 'nope' not found"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="tiny", max_tokens=5,
                               messages=[{"role": "user",
                                          "content": [{"type": "text", "text": "what?"}, image]}])
    assert err.value.body["error"]["message"] == '"tiny" does not support images'
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="tiny", max_tokens=5, messages=Q,
                               extra_body={"container": "c_1"})
    assert (err.value.body["error"]["message"]
            == "container: not supported by mlx-bridge for MLX models")
    for body, message in (({"model": "tiny", "messages": Q},
                           "max_tokens is required and must be positive"),
                          ({"model": "tiny", "max_tokens": 5}, "messages is required")):
        resp = requests.post(urls[0] + "/v1/messages", json=body, timeout=10)
        assert resp.status_code == 400
        assert resp.json()["error"] == {"type": "invalid_request_error", "message": message}
    bad = requests.post(urls[0] + "/v1/messages", data=b"{", timeout=10)
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    missing = requests.post(urls[0] + "/v1/messages/batches", json={}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_upstream_models_are_forwarded(client, urls):
    kw = {"model": "up-only", "max_tokens": 8, "messages": Q, **GREEDY}
    upstream = anthropic.Anthropic(base_url=urls[1], api_key="x", max_retries=0)
    direct = upstream.messages.create(**kw)
    via = client.messages.create(**kw)
    assert via.content[0].text == direct.content[0].text and via.usage == direct.usage
    with client.messages.stream(**kw) as stream:
        assert stream.get_final_message().content[0].text == direct.content[0].text
    counted = client.messages.count_tokens(model="up-only", messages=Q)
    assert counted.input_tokens == direct.usage.input_tokens


def test_a_stalled_stream_does_not_hold_up_others(client, urls):
    """A client opens a long /v1/messages stream and stops reading: a plain request, a token
    count (an engine job of its own) and a short message are still answered within seconds."""
    hog = requests.post(urls[0] + "/v1/messages", stream=True, timeout=30,
                        json={"model": "tiny", "max_tokens": 100_000, "messages": Q,
                              "stream": True})
    try:
        assert next(hog.iter_lines()) == b"event: message_start"  # it is generating
        for call in (lambda: requests.get(urls[0] + "/api/version", timeout=10).raise_for_status(),
                     lambda: client.messages.count_tokens(model="tiny", messages=Q),
                     lambda: client.messages.create(model="tiny", max_tokens=5, messages=Q)):
            started = time.perf_counter()
            call()
            assert time.perf_counter() - started < 3
    finally:
        hog.close()


def test_a_full_queue_is_529_overloaded(tmp_path, mappings_file):
    """Anthropic's status for "overloaded" (the SDK's OverloadedError); native paths keep 503."""
    from bridge.app import create_app
    from bridge.config import load_config
    from bridge.engine import Engine

    app = create_app(load_config({}, mappings_path=mappings_file, home=tmp_path, upstream="none"),
                     engine=Engine(max_queue=0))  # every job finds the queue full
    app.extensions["bridge"].start()
    try:
        client = app.test_client()
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            resp = client.post(path, json={"model": "tiny", "max_tokens": 5, "messages": Q})
            assert (resp.status_code == 529
                    and resp.get_json()["error"]["type"] == "overloaded_error")
        native = client.post("/api/chat", json={"model": "tiny", "messages": Q, "stream": False})
        assert native.status_code == 503
    finally:
        app.extensions["bridge"].stop()
