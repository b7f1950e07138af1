"""LlamaIndex's Ollama integrations (llama-index-llms-ollama, llama-index-embeddings-ollama)
against a real `mlx-bridge serve` process: the session's `protocol_bridges` bridge with the tiny
model and the scripted `tools` / `think` models (tests/scripted_model.py).
"""

from __future__ import annotations

import asyncio

import pytest

from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER

pytest.importorskip("llama_index.llms.ollama",
                    reason="SKIPPED CLIENT TEST: llama-index-llms-ollama is not installed "
                           "(pip install -e '.[test]' installs it)")
pytest.importorskip("llama_index.embeddings.ollama",
                    reason="SKIPPED CLIENT TEST: llama-index-embeddings-ollama is not installed")

from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402
from llama_index.embeddings.ollama import OllamaEmbedding  # noqa: E402
from llama_index.llms.ollama import Ollama  # noqa: E402


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return WEATHER if city == "Paris" else "unknown city"


TOOL = FunctionTool.from_defaults(fn=get_weather)
HI = [ChatMessage(role="user", content="hi")]


@pytest.fixture(scope="module")
def url(protocol_bridges) -> str:
    return protocol_bridges[0]


def llm(url: str, model: str, **kw) -> Ollama:
    return Ollama(model=model, base_url=url, request_timeout=60, **kw)


def test_metadata_reads_show(url):
    meta = llm(url, "tools").metadata
    assert meta.context_window > 0 and meta.is_chat_model and meta.is_function_calling_model


def test_chat_complete_and_their_streams(url):
    tiny = llm(url, "tiny", additional_kwargs={"num_predict": 3})
    reply = tiny.chat(HI)
    assert reply.message.role == "assistant" and reply.raw["eval_count"] == 3
    streamed = list(tiny.stream_chat(HI))
    assert streamed[-1].message.content == "".join(r.delta for r in streamed)
    assert tiny.complete("hi").raw["done"] is True
    assert len(list(tiny.stream_complete("hi"))) > 1


def test_async_stream_chat(url):
    async def run() -> list[str]:
        gen = await llm(url, "tiny", additional_kwargs={"num_predict": 3}).astream_chat(HI)
        return [r.delta async for r in gen]

    assert len(asyncio.run(run())) > 1


def test_tool_calls_and_predict_and_call(url):
    tools = llm(url, "tools")
    reply = tools.chat_with_tools([TOOL], user_msg="What is the weather in Paris?")
    [selection] = tools.get_tool_calls_from_response(reply)
    assert (selection.tool_name, selection.tool_kwargs) == ("get_weather", {"city": "Paris"})
    assert str(tools.predict_and_call([TOOL], user_msg="weather?")) == WEATHER


def test_function_agent_runs_the_tool_and_answers(url):
    from llama_index.core.agent.workflow import FunctionAgent

    agent = FunctionAgent(tools=[TOOL], llm=llm(url, "tools"))

    async def run() -> str:
        return str(await agent.run("What is the weather in Paris?"))

    assert asyncio.run(run()) == ANSWER


def test_thinking_blocks(url):
    think = llm(url, "think", thinking=True)
    blocks = think.chat(HI).message.blocks
    assert [(b.block_type, getattr(b, "content", None) or getattr(b, "text", None))
            for b in blocks] == [("thinking", THOUGHT), ("text", HELLO)]
    deltas = [r.additional_kwargs.get("thinking_delta") for r in think.stream_chat(HI)]
    assert "".join(d for d in deltas if d) == THOUGHT


def test_embeddings(url):
    emb = OllamaEmbedding(model_name="tiny", base_url=url)
    assert len(emb.get_query_embedding("hi")) == 64
    assert [len(v) for v in emb.get_text_embedding_batch(["a", "b", "c"])] == [64, 64, 64]
    assert len(asyncio.run(emb.aget_text_embedding("a"))) == 64
