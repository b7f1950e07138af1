"""The `anthropic` SDK's higher-level helpers against a real `mlx-bridge serve` process.

The scripted `tools` model (tests/scripted_model.py) calls `get_weather` and, given the tool's
result, answers; `think` thinks, then says hello. Found by the client sweep (docs/clients.md):
the SDK's tool runner asks for a server-held message thread (`thread: {"type": "create"}`,
beta `message-threads-*`) and only resends without one when the refusal carries
`error.details.error_code == "thread_unsupported_request"`; a bare 400 ended the run.
"""

from __future__ import annotations

import anthropic
import pytest
from anthropic import beta_tool
from pytest_httpserver import HTTPServer

from bridge.app import create_app
from bridge.config import load_config

from .helpers import write_mappings
from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@beta_tool
def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: the city
    """
    return WEATHER if city == "Paris" else "unknown city"


@pytest.fixture(scope="module")
def client(protocol_bridges) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=protocol_bridges[0], api_key="not-checked",
                               max_retries=0)


def _texts(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_tool_runner_with_its_default_thread_runs_the_tool_and_answers(client):
    runner = client.beta.messages.tool_runner(model="tools", max_tokens=50, tools=[get_weather],
                                              messages=ASK)
    first, second = list(runner)
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    assert _texts(second) == ANSWER and second.stop_reason == "end_turn"


def test_streaming_tool_runner_runs_the_tool_and_answers(client):
    runner = client.beta.messages.tool_runner(model="tools", max_tokens=50, tools=[get_weather],
                                              messages=ASK, stream=True)
    finals = [stream.get_final_message() for stream in runner]
    assert [b.type for b in finals[0].content] == ["tool_use"]
    assert _texts(finals[-1]) == ANSWER


def test_a_thread_is_refused_with_the_code_the_sdk_reads(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.messages.create(model="tiny", max_tokens=3, messages=ASK,
                                    thread={"type": "create"})
    assert info.value.status_code == 400
    assert info.value.error_code == "thread_unsupported_request"
    assert "thread" in info.value.body["error"]["message"]


def test_a_thread_for_an_upstream_model_is_refused_before_it_is_forwarded(
        httpserver: HTTPServer, tmp_path):
    """Ollama ignores `thread`: forwarded, the reply would look threaded and the SDK's next turn
    would carry only the new messages. So the refusal comes first, whatever the backend."""
    httpserver.expect_request("/v1/messages").respond_with_json({"type": "message"})
    config = load_config({}, mappings_path=write_mappings(tmp_path / "map.yaml", {}),
                         home=tmp_path / "home", upstream=httpserver.url_for("/").rstrip("/"))
    body = {"model": "llama3.2", "max_tokens": 5, "messages": ASK,
            "thread": {"type": "continue", "previous_message_id": "msg_1"}}
    resp = create_app(config).test_client().post("/v1/messages", json=body)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["details"] == {"error_code": "thread_unsupported_request"}
    assert httpserver.log == []


def test_beta_messages_with_betas_think_and_count(client):
    reply = client.beta.messages.create(
        model="think", max_tokens=2000, messages=[{"role": "user", "content": "hi"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        betas=["interleaved-thinking-2025-05-14"])
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None))
            for b in reply.content] == [("thinking", THOUGHT), ("text", HELLO)]
    count = client.beta.messages.count_tokens(model="tools", messages=ASK,
                                              tools=[get_weather.to_dict()],
                                              betas=["token-counting-2024-11-01"])
    plain = client.messages.count_tokens(model="tools", messages=ASK)
    assert count.input_tokens > plain.input_tokens > 0
