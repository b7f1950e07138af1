"""langchain-ollama's common calls against a real `mlx-bridge serve` process (client sweep,
docs/clients.md): the session's `protocol_bridges` bridge with the tiny model and the scripted
`tools` / `think` models (tests/scripted_model.py). Calls not covered by test_e2e_clients.py,
test_openai_clients.py or test_demo_tools.py: thinking, a whole tool round trip with a
ToolMessage, streamed tool-call chunks, OllamaLLM, OllamaEmbeddings, model validation.
"""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM

from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return WEATHER if city == "Paris" else "unknown city"


@pytest.fixture(scope="module")
def url(protocol_bridges) -> str:
    return protocol_bridges[0]


def test_reasoning_whole_and_streamed(url):
    think = ChatOllama(model="think", base_url=url, reasoning=True)
    reply = think.invoke("hi")
    assert (reply.additional_kwargs["reasoning_content"], reply.content) == (THOUGHT, HELLO)
    chunks = list(think.stream("hi"))
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == THOUGHT
    assert "".join(c.content for c in chunks) == HELLO
    hidden = ChatOllama(model="think", base_url=url, reasoning=False).invoke("hi")
    assert hidden.content == HELLO and "reasoning_content" not in hidden.additional_kwargs


def test_tool_round_trip_with_a_tool_message(url):
    bound = ChatOllama(model="tools", base_url=url).bind_tools([get_weather])
    history = [HumanMessage("What is the weather in Paris?")]
    call = bound.invoke(history)
    [tc] = call.tool_calls
    assert (tc["name"], tc["args"]) == ("get_weather", {"city": "Paris"})
    history += [call, ToolMessage(get_weather.invoke(tc["args"]), tool_call_id=tc["id"])]
    answer = bound.invoke(history)
    assert answer.content == ANSWER and answer.usage_metadata["output_tokens"] > 0


def test_streamed_tool_call_chunks(url):
    bound = ChatOllama(model="tools", base_url=url).bind_tools([get_weather])
    chunks = [c.tool_call_chunks for c in bound.stream("What is the weather in Paris?")]
    [[chunk]] = [c for c in chunks if c]
    assert chunk["name"] == "get_weather" and chunk["args"] == '{"city": "Paris"}'


def test_ollama_llm_whole_and_streamed(url):
    llm = OllamaLLM(model="tiny", base_url=url, num_predict=3)
    assert isinstance(llm.invoke("hi"), str)
    result = llm.generate(["hi"]).generations[0][0]
    assert result.generation_info["done"] is True and result.generation_info["eval_count"] == 3
    assert len(list(llm.stream("hi"))) > 1


def test_embeddings(url):
    emb = OllamaEmbeddings(model="tiny", base_url=url)
    assert len(emb.embed_query("hi")) == 64
    assert [len(v) for v in emb.embed_documents(["a", "b", "c"])] == [64, 64, 64]
    assert len(asyncio.run(emb.aembed_documents(["a"]))[0]) == 64


def test_model_validation_reads_the_tags(url):
    assert ChatOllama(model="tiny", base_url=url, validate_model_on_init=True).model == "tiny"
    with pytest.raises(ValueError, match="not found"):
        ChatOllama(model="nope", base_url=url, validate_model_on_init=True)
