"""/v1/responses through the official `openai` SDK against real `mlx-bridge serve` processes.

Same servers as tests/test_anthropic_clients.py: `tiny`, the scripted `think` / `tools` models on
MLX, and `up-only` only on the upstream (a second bridge process).
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER

Q = "What is the weather in Paris?"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"], "additionalProperties": False}
WEATHER_TOOL = {"type": "function", "name": "get_weather",
                "description": "Current weather in a city", "parameters": CITY, "strict": True}


@pytest.fixture(scope="module")
def urls(protocol_bridges):
    return protocol_bridges


@pytest.fixture(scope="module")
def oai(urls) -> openai.OpenAI:
    return openai.OpenAI(base_url=urls[0] + "/v1", api_key="not-checked", max_retries=0)


def test_create_and_stream_agree(oai):
    kw = {"model": "tiny", "input": Q, "max_output_tokens": 8, "temperature": 0}
    whole = oai.responses.create(**kw)
    assert whole.object == "response" and whole.model == "tiny" and whole.id.startswith("resp_")
    # cut by max_output_tokens, and `completed` all the same, as Ollama (spec §3b)
    assert whole.status == "completed" and whole.incomplete_details is None
    assert (whole.usage.output_tokens == 8
            and whole.usage.total_tokens == whole.usage.input_tokens + 8)
    events = list(oai.responses.create(**kw, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress",
                                            "response.output_item.added",
                                            "response.content_part.added"]
    assert (events[-1].type == "response.completed"
            and events[-1].response.output_text == whole.output_text)
    assert ("".join(e.delta for e in events if e.type == "response.output_text.delta")
            == whole.output_text)
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1


def test_the_stream_helper_reads_an_answer_the_token_limit_cut(oai):
    """`responses.stream(...).get_final_response()` raises without `response.completed`: a cut
    answer gets it, as from Ollama."""
    with oai.responses.stream(model="tiny", input=Q, max_output_tokens=4,
                              temperature=0) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.usage.output_tokens == 4
    assert final.output_text == streamed


def test_reasoning_and_the_stream_helper(oai):
    kw = {"model": "think", "input": Q, "reasoning": {"effort": "high"}}
    out = oai.responses.create(**kw)
    assert out.status == "completed" and out.output_text == HELLO
    assert out.output[0].type == "reasoning" and out.output[0].summary[0].text == THOUGHT
    assert out.reasoning.effort == "high"
    with oai.responses.stream(**kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds and final.output_text == HELLO
    off = oai.responses.create(model="think", input=Q, reasoning={"effort": "none"})
    assert [o.type for o in off.output] == ["message"] and off.output_text == HELLO


def test_function_tools_round_trip(oai):
    out = oai.responses.create(model="tools", input=Q, tools=[WEATHER_TOOL])
    (call,) = out.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    events = list(oai.responses.create(model="tools", input=Q, tools=[WEATHER_TOOL], stream=True))
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert (json.loads(done.arguments) == {"city": "Paris"}
            and events[-1].type == "response.completed")
    follow = [{"role": "user", "content": Q}, *out.output,
              {"type": "function_call_output", "call_id": call.call_id, "output": WEATHER}]
    answer = oai.responses.create(model="tools", input=follow, tools=[WEATHER_TOOL])
    assert answer.output_text == ANSWER


def test_tool_choice_required_forces_a_call(oai):
    """The random tiny model writes no call by itself; a required tool_choice makes it (a
    grammar)."""
    kw = {"model": "tiny", "input": Q, "tools": [WEATHER_TOOL], "max_output_tokens": 100,
          "temperature": 0}
    assert all(o.type == "message" for o in oai.responses.create(**kw).output)
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        (call,) = oai.responses.create(**kw, tool_choice=choice).output
        assert call.type == "function_call" and call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), CITY)
    hidden = oai.responses.create(model="tools", input=Q, tools=[WEATHER_TOOL], tool_choice="none")
    assert [o.type for o in hidden.output] == ["message"] and "<tool_call>" in hidden.output_text


def test_text_format_is_enforced(oai):
    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int = Field(ge=0, le=150)

    parsed = oai.responses.parse(model="tiny", input="Describe someone.", text_format=Person,
                                 temperature=0, max_output_tokens=200)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Person)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    out = oai.responses.create(model="tiny", input="Is it?", temperature=0, max_output_tokens=50,
                               text={"format": {"type": "json_schema", "name": "answer",
                                                "schema": schema}})
    jsonschema.validate(json.loads(out.output_text), schema)
    loose = oai.responses.create(model="tiny", input="JSON please", temperature=0,
                                 max_output_tokens=20, text={"format": {"type": "json_object"}})
    assert loose.output_text.startswith("{")  # the random model writes JSON only under the grammar


def test_refusals_have_the_openai_shape(oai):
    for extra, message in (
            ({"previous_response_id": "resp_1"},
             "previous_response_id: responses are not stored "
             "(send the whole conversation in input)"),
            ({"store": True}, "store: true is not supported: mlx-bridge does not store responses "
                              "(send store: false)"),
            ({"tools": [{"type": "web_search"}]},
             "tools[0]: built-in tools ('web_search') are not supported; only function tools")):
        with pytest.raises(openai.BadRequestError) as err:
            oai.responses.create(model="tiny", input=Q, **extra)
        assert err.value.body == {"message": message, "type": "invalid_request_error",
                                  "param": None, "code": None}
    with pytest.raises(openai.NotFoundError) as err:
        oai.responses.create(model="nope", input=Q)
    assert err.value.body["message"] == "model 'nope' not found"


def test_upstream_models_are_forwarded(oai, urls):
    kw = {"model": "up-only", "input": Q, "max_output_tokens": 8, "temperature": 0}
    direct = openai.OpenAI(base_url=urls[1] + "/v1", api_key="x",
                           max_retries=0).responses.create(**kw)
    via = oai.responses.create(**kw)
    assert (via.output_text == direct.output_text
            and via.usage.input_tokens == direct.usage.input_tokens)
