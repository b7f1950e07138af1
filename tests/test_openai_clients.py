"""/v1 through real clients (openai, langchain) against real `mlx-bridge serve` processes.

The bridge serves the tiny model and the scripted `think` / `tools` models on MLX; its upstream
is another bridge process (for /v1 forwarding). For what the MLX engine cannot do (images) and
upstream-only models (embeddings), the upstream is a small HTTP server that answers in Ollama's
shapes and records what reached it: these tests check the bridge's fallback, not a model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import openai
import pytest
import requests
from pydantic import BaseModel, Field

from .conftest import start_server, stop_server, write_mappings
from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER

Q = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


class StubUpstream(BaseHTTPRequestHandler):
    """Answers /v1/embeddings (one fixed vector per input) and /api/chat like Ollama; keeps the
    bodies."""

    seen: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(body)
        if self.path == "/api/chat":
            self._json({"model": json.loads(body)["model"], "created_at": "2024-06-01T12:00:00Z",
                        "message": {"role": "assistant", "content": "a red square"}, "done": True,
                        "done_reason": "stop"})
            return
        inputs = json.loads(body)["input"]
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = [{"object": "embedding", "embedding": [0.6, 0.8], "index": i}
                for i in range(len(inputs))]
        self._json({"object": "list", "data": data, "model": json.loads(body)["model"],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    def do_GET(self) -> None:  # noqa: N802
        self._json({"models": [{"name": "embed-up:latest", "model": "embed-up:latest",
                                "modified_at": "2024-06-01T12:00:00.123456789Z", "size": 1,
                                "digest": "0" * 64, "details": {}}]})

    def _json(self, obj: dict) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def stub_upstream():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StubUpstream)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def bridges(protocol_bridges):
    """(bridge url, upstream bridge url): `up-only` lives only on the upstream. The session's
    pair (conftest.protocol_bridges), shared with the Anthropic and Responses client tests:
    these tests only read."""
    return protocol_bridges


@pytest.fixture(scope="module")
def oai(bridges) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridges[0] + "/v1", api_key="ollama", max_retries=0)


def test_chat_non_streamed_and_streamed_agree(oai):
    kw = {"model": "tiny", "messages": Q, "temperature": 0, "max_tokens": 10}
    whole = oai.chat.completions.create(**kw)
    assert whole.object == "chat.completion" and whole.system_fingerprint == "fp_ollama"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 10
    chunks = list(oai.chat.completions.create(**kw, stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_completions(oai):
    whole = oai.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8,
                                   temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    parts = list(oai.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8,
                                        temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert whole.usage.completion_tokens == 8


def test_models_list_local_and_upstream(oai, bridges):
    ids = {m.id for m in oai.models.list()}
    assert {"tiny:latest", "think:latest", "tools:latest", "up-only:latest"} <= ids
    assert oai.models.retrieve("tiny").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("nope")
    assert err.value.body["message"] == "model 'nope' not found"


def test_tools_through_the_openai_client(oai):
    out = oai.chat.completions.create(model="tools", messages=Q, tools=[WEATHER_TOOL])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.function.name == "get_weather"
            and json.loads(call.function.arguments) == {"city": "Paris"})
    streamed = list(oai.chat.completions.create(model="tools", messages=Q, tools=[WEATHER_TOOL],
                                                stream=True))
    calls = [tc for c in streamed for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    follow = [*Q, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": WEATHER}]
    answer = oai.chat.completions.create(model="tools", messages=follow, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == ANSWER


def test_reasoning_through_the_openai_client(oai):
    out = oai.chat.completions.create(model="think", messages=Q, reasoning_effort="high")
    msg = out.choices[0].message
    assert msg.content == HELLO and msg.model_extra["reasoning"] == THOUGHT


def test_structured_output_through_the_openai_client(oai):
    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int = Field(ge=0, le=150)

    parsed = oai.chat.completions.parse(model="tiny", messages=Q, response_format=Person,
                                        temperature=0)
    assert isinstance(parsed.choices[0].message.parsed, Person)
    finished = 0
    for seed in range(1, 7):  # free-form JSON may nest on until max_tokens ("length")
        out = oai.chat.completions.create(model="tiny", messages=Q, temperature=0.9, seed=seed,
                                          max_tokens=200, response_format={"type": "json_object"})
        if out.choices[0].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(out.choices[0].message.content), dict)
        else:
            assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 200
    assert finished >= 1


def test_errors_have_the_openai_shape(oai, bridges):
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="nope", messages=Q)
    assert err.value.body == {"message": "model 'nope' not found", "type": "not_found_error",
                              "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny", messages=[])
    assert err.value.body["message"] == "[] is too short - 'messages'"
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="think", messages=Q, tools=[WEATHER_TOOL])
    assert err.value.body["message"] == "think:latest does not support tools"
    raw = requests.post(bridges[0] + "/v1/chat/completions", data=b"{", timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_upstream_models_are_forwarded_unchanged(oai, bridges):
    kw = {"model": "up-only", "messages": Q, "temperature": 0, "max_tokens": 8}
    direct = openai.OpenAI(base_url=bridges[1] + "/v1", api_key="x",
                           max_retries=0).chat.completions.create(**kw)
    via = oai.chat.completions.create(**kw)
    assert via.choices[0].message.content == direct.choices[0].message.content
    streamed = list(oai.chat.completions.create(**kw, stream=True))
    assert ("".join(c.choices[0].delta.content or "" for c in streamed)
            == direct.choices[0].message.content)


def test_images_for_a_text_model_are_refused_or_forwarded(bridges):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {"model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}]}
    resp = requests.post(bridges[0] + "/v1/chat/completions", json=body, timeout=30)
    assert (resp.status_code == 400
            and resp.json()["error"]["message"] == '"tiny" does not support images')
    native = requests.post(bridges[0] + "/api/chat", timeout=30, json={
        "model": "tiny", "stream": False,
        "messages": [{"role": "user", "content": "hi", "images": ["iVBORw0KGgo="]}]})
    assert (native.status_code == 400
            and native.json() == {"error": '"tiny" does not support images'})


def test_embeddings_and_images_fall_back_to_the_upstream(tmp_path, stub_upstream, tiny_model_dir):
    mappings = write_mappings(tmp_path / "map.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "auto"}}, upstream=stub_upstream)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / "home")])
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        out = client.embeddings.create(model="embed-up", input=["a", "b"])
        assert ([d.embedding for d in out.data] == [[0.6, 0.8], [0.6, 0.8]]
                and out.model == "embed-up")
        assert json.loads(StubUpstream.seen[-1]) == {"model": "embed-up", "input": ["a", "b"],
                                                           "encoding_format": "base64"}
        forwarded = len(StubUpstream.seen)
        auto = client.embeddings.create(model="tiny", input="x")  # MLX embeds it now: no fallback
        assert len(auto.data[0].embedding) == 64 and len(StubUpstream.seen) == forwarded
        bad = requests.post(url + "/v1/embeddings", json={"model": "tiny", "input": []}, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "invalid input"
        chat = {"model": "tiny", "stream": False,
                "messages": [{"role": "user", "content": "what is this?",
                              "images": ["iVBORw0KGgo="]}]}
        # MLX cannot see: `auto` forwards
        seen = requests.post(url + "/api/chat", json=chat, timeout=30)
        assert seen.status_code == 200 and seen.json()["message"]["content"] == "a red square"
        assert json.loads(StubUpstream.seen[-1])["messages"][0]["images"] == ["iVBORw0KGgo="]
    finally:
        stop_server(proc)


def test_langchain_bind_tools_and_structured_output(bridges):
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return WEATHER

    llm = ChatOllama(model="tools", base_url=bridges[0]).bind_tools([get_weather])
    msg = llm.invoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]

    class Person(BaseModel):
        name: str = Field(max_length=12)
        age: int = Field(ge=0, le=150)
        tags: list[str] = Field(max_length=2)

    llm = ChatOllama(model="tiny", base_url=bridges[0], temperature=0, num_predict=300)
    person = llm.with_structured_output(Person).invoke("Describe someone.")
    assert isinstance(person, Person)
    jsonschema.validate(person.model_dump(), Person.model_json_schema())
