"""The openai SDK's calls not covered by test_openai_clients.py / test_responses_clients.py,
against the session's `protocol_bridges` bridge (client sweep, docs/clients.md): logprobs through
the SDK's types, the streaming helper with a strict pydantic tool, a tool round trip, the async
client, embeddings as the SDK asks for them by default (base64) and with `dimensions`.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from pydantic import BaseModel

from .scripted_model import ANSWER, WEATHER

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HI = [{"role": "user", "content": "hi"}]
# Greedy where a test counts tokens: a sampled token of the random tiny model may be its EOS
# (seen once in a run), which ends the answer before max_tokens.
GREEDY = {"temperature": 0}


class GetWeather(BaseModel):
    city: str


@pytest.fixture(scope="module")
def url(protocol_bridges) -> str:
    return protocol_bridges[0] + "/v1"


@pytest.fixture(scope="module")
def oai(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="not-checked", max_retries=0)


def test_chat_and_completion_logprobs(oai):
    out = oai.chat.completions.create(model="tiny", messages=HI, max_tokens=3, logprobs=True,
                                      top_logprobs=2, **GREEDY)
    entries = out.choices[0].logprobs.content
    assert len(entries) == 3 and all(len(e.top_logprobs) == 2 and e.logprob <= 0
                                     for e in entries)
    streamed = [c.choices[0].logprobs for c in oai.chat.completions.create(
        model="tiny", messages=HI, max_tokens=2, logprobs=True, stream=True, **GREEDY) if c.choices]
    assert sum(len(lp.content) for lp in streamed if lp and lp.content) == 2
    legacy = oai.completions.create(model="tiny", prompt="hi", max_tokens=2, logprobs=2,
                                    **GREEDY)
    assert len(legacy.choices[0].logprobs.tokens) == 2


def test_stream_helper_parses_a_strict_tool_call(oai):
    tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    with oai.beta.chat.completions.stream(model="tools", messages=ASK, tools=[tool]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.parsed_arguments == GetWeather(city="Paris")
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_round_trip(oai):
    tools = [openai.pydantic_function_tool(GetWeather, name="get_weather")]
    first = oai.chat.completions.create(model="tools", messages=ASK, tools=tools)
    message = first.choices[0].message
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": WEATHER}]
    again = oai.chat.completions.create(model="tools", messages=history, tools=tools)
    assert again.choices[0].message.content == ANSWER


def test_async_client(url):
    async def run():
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        whole = await client.chat.completions.create(model="tiny", messages=HI, max_tokens=2,
                                                     **GREEDY)
        parts = [c async for c in await client.chat.completions.create(
            model="tiny", messages=HI, max_tokens=2, stream=True, **GREEDY)]
        await client.close()
        return whole, parts

    whole, parts = asyncio.run(run())
    # The same greedy request streamed: the same text (the tiny model's 2 tokens may make no
    # whole character, so there may be no text chunk before the last), ended the same way.
    assert whole.choices[0].finish_reason == "length"
    assert parts[-1].choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert streamed == whole.choices[0].message.content


def test_embeddings_default_and_dimensions(oai):
    plain = oai.embeddings.create(model="tiny", input=["a", "b"])
    assert [len(d.embedding) for d in plain.data] == [64, 64] and plain.usage.prompt_tokens > 0
    assert len(oai.embeddings.create(model="tiny", input="a", dimensions=8).data[0].embedding) == 8
