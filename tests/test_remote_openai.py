"""A model routed to an OpenAI-protocol engine: a real `mlx_lm.server` process on the tiny model.

The bridge converts Ollama's native API to `/v1/*` and back; each answer is checked against what
the same `mlx_lm.server` answers directly (greedy decoding: the same tokens), so the conversion,
not only the shape, is tested. Clients: raw HTTP, ollama-python, langchain-ollama, the openai SDK.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import ollama
import pytest
import requests

from bridge.routing import openai_remote, openai_request, openai_stream

from .helpers import free_port, ndjson, start_server, stop_server, wait_until, write_mappings
from .remote_servers import SEED_REPO, hf_cache_with, start_mlx_lm_server
from .scripted_model import (
    ANSWER,
    THINK_SCRIPT,
    THINK_TEMPLATE,
    THOUGHT,
    TOOLS_SCRIPT,
    TOOLS_TEMPLATE,
    WEATHER,
    build_scripted_model,
)
from .scripted_model import HELLO as SCRIPTED_HELLO

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
HELLO = [{"role": "user", "content": "hello there"}]
GREEDY = {"temperature": 0, "num_predict": 8}


@dataclass
class Servers:
    bridge: str
    mlx: str  # the mlx_lm.server


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("remote-openai")
    tools = build_scripted_model(root / "tools", TOOLS_SCRIPT, TOOLS_TEMPLATE)
    think = build_scripted_model(root / "think", THINK_SCRIPT, THINK_TEMPLATE)
    hf_home = hf_cache_with(root / "hf", SEED_REPO, tiny_model_dir)
    mlx_proc, mlx_url, _ = start_mlx_lm_server(SEED_REPO, root, {"HF_HOME": str(hf_home)})
    mappings = write_mappings(root / "map.yaml", {
        "remote-mlx": {"backend": "mlx", "endpoint_url": mlx_url, "remote_model": SEED_REPO},
        "remote-tools": {"backend": "mlx", "endpoint_url": mlx_url, "remote_model": str(tools)},
        "remote-think": {"backend": "mlx", "endpoint_url": mlx_url, "remote_model": str(think)},
    }, upstream=f"http://127.0.0.1:{free_port()}")  # no Ollama: nothing else answers
    try:
        proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home")])
    except Exception:
        stop_server(mlx_proc)
        raise
    yield Servers(url, mlx_url)
    stop_server(proc)
    stop_server(mlx_proc)


def direct_chat(srv: Servers, messages: list, max_tokens: int = 8, **extra) -> dict:
    """What mlx_lm.server itself answers (greedy), to compare the bridge's conversion with."""
    body = {"model": SEED_REPO, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, **extra}
    resp = requests.post(srv.mlx + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def native(srv: Servers, path: str, body: dict) -> requests.Response:
    return requests.post(srv.bridge + path, json=body, timeout=60)


def test_native_chat_is_converted_both_ways(srv):
    want = direct_chat(srv, HELLO)
    reply = native(srv, "/api/chat", {"model": "remote-mlx", "messages": HELLO, "stream": False,
                                      "options": GREEDY})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "remote-mlx" and body["done"] is True
    assert body["message"] == {"role": "assistant",
                               "content": want["choices"][0]["message"]["content"]}
    assert body["done_reason"] == want["choices"][0]["finish_reason"] == "length"
    assert body["prompt_eval_count"] == want["usage"]["prompt_tokens"]
    assert body["eval_count"] == want["usage"]["completion_tokens"] == 8
    assert body["total_duration"] >= body["prompt_eval_duration"] > 0
    assert body["eval_duration"] > 0 and body["load_duration"] == 0

    streamed = native(srv, "/api/chat", {"model": "remote-mlx", "messages": HELLO,
                                         "options": GREEDY})
    assert streamed.headers["Content-Type"].startswith("application/x-ndjson")
    lines = ndjson(streamed.iter_lines())
    assert len(lines) >= 3 and all(not line["done"] for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == body["message"]["content"]
    final = lines[-1]
    assert final["done"] and final["done_reason"] == "length" and final["eval_count"] == 8
    assert final["message"] == {"role": "assistant", "content": ""}


def test_generate_templated_and_raw(srv):
    chat = direct_chat(srv, [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "hi"}])
    templated = native(srv, "/api/generate", {"model": "remote-mlx", "prompt": "hi",
                                              "system": "be brief", "stream": False,
                                              "options": GREEDY}).json()
    # a plain prompt gets the model's template, as Ollama does: a one-turn chat
    assert templated["response"] == chat["choices"][0]["message"]["content"]
    assert templated["prompt_eval_count"] == chat["usage"]["prompt_tokens"]
    completion = requests.post(srv.mlx + "/v1/completions", timeout=60, json={
        "model": SEED_REPO, "prompt": "hi", "max_tokens": 8, "temperature": 0}).json()
    lines = ndjson(native(srv, "/api/generate", {"model": "remote-mlx", "prompt": "hi",
                                                 "raw": True, "options": GREEDY}).iter_lines())
    assert "".join(line["response"] for line in lines) == completion["choices"][0]["text"]
    assert lines[-1]["done"] and lines[-1]["prompt_eval_count"] == 2


def test_tools_and_the_tool_result_round_trip(srv):
    """mlx_lm.server parses the scripted model's tool call; the bridge hands it back in Ollama's
    shape, and the tool result goes back tied to the call."""
    ask = [{"role": "user", "content": "weather in Paris?"}]
    body = native(srv, "/api/chat", {"model": "remote-tools", "messages": ask, "stream": False,
                                     "tools": [WEATHER_TOOL]}).json()
    (call,) = body["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather",
                                "arguments": {"city": "Paris"}}
    assert call["id"] and body["done_reason"] == "stop"
    lines = ndjson(native(srv, "/api/chat", {"model": "remote-tools", "messages": ask,
                                             "tools": [WEATHER_TOOL]}).iter_lines())
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["message"]["tool_calls"][0]["function"][
        "arguments"] == {"city": "Paris"}  # whole, in one chunk, as Ollama sends them
    turn = ask + [body["message"], {"role": "tool", "tool_name": "get_weather",
                                    "content": WEATHER}]
    answer = native(srv, "/api/chat", {"model": "remote-tools", "messages": turn,
                                       "stream": False, "tools": [WEATHER_TOOL]}).json()
    assert answer["message"]["content"] == ANSWER


def test_reasoning_comes_back_as_thinking(srv):
    """mlx_lm.server sends the scripted model's think block as `reasoning`: Ollama's `thinking`;
    `think: false` reaches its template (`enable_thinking`), and no thinking is shown."""
    ask = {"model": "remote-think", "messages": HELLO}
    body = native(srv, "/api/chat", {**ask, "stream": False}).json()
    assert body["message"]["thinking"] == THOUGHT
    assert body["message"]["content"] == SCRIPTED_HELLO and body["done_reason"] == "stop"
    lines = ndjson(native(srv, "/api/chat", ask).iter_lines())
    assert "".join(line["message"].get("thinking", "") for line in lines) == THOUGHT
    off = native(srv, "/api/chat", {**ask, "stream": False, "think": False}).json()
    assert off["message"] == {"role": "assistant", "content": SCRIPTED_HELLO}
    generated = native(srv, "/api/generate", {"model": "remote-think", "prompt": "hello there",
                                              "stream": False}).json()
    assert (generated["thinking"], generated["response"]) == (THOUGHT, SCRIPTED_HELLO)


def test_ollama_python_and_the_listing(srv):
    client = ollama.Client(host=srv.bridge, timeout=60)
    listed = {m.model: m for m in client.list().models}
    assert listed["remote-mlx:latest"].size == 0
    shown = client.show("remote-mlx")
    assert shown.modelfile and "FROM " + SEED_REPO in shown.modelfile
    raw_show = native(srv, "/api/show", {"model": "remote-mlx"}).json()
    assert (raw_show["remote_model"], raw_show["remote_host"]) == (SEED_REPO, srv.mlx)
    want = direct_chat(srv, HELLO)["choices"][0]["message"]["content"]
    reply = client.chat(model="remote-mlx", messages=HELLO, options=GREEDY)
    assert reply.message.content == want and reply.eval_count == 8
    parts = list(client.chat(model="remote-mlx", messages=HELLO, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == want and parts[-1].done
    generated = client.generate(model="remote-mlx", prompt="hello there", options=GREEDY)
    assert generated.response == want and generated.done_reason == "length"
    tags = requests.get(srv.bridge + "/api/tags", timeout=10).json()["models"]
    entry = next(m for m in tags if m["name"] == "remote-mlx:latest")
    assert (entry["remote_model"], entry["remote_host"]) == (SEED_REPO, srv.mlx)


def test_langchain_ollama(srv):
    from langchain_ollama import ChatOllama

    want = direct_chat(srv, HELLO)
    llm = ChatOllama(model="remote-mlx", base_url=srv.bridge, temperature=0, num_predict=8)
    message = llm.invoke("hello there")
    assert message.content == want["choices"][0]["message"]["content"]
    assert message.usage_metadata["input_tokens"] == want["usage"]["prompt_tokens"]
    assert message.usage_metadata["output_tokens"] == 8
    assert "".join(str(c.content) for c in llm.stream("hello there")) == message.content


def eval_tokens(srv: Servers) -> float:
    """`mlx_bridge_eval_tokens_total` of remote-mlx (all backends)."""
    metrics = requests.get(srv.bridge + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("mlx_bridge_eval_tokens_total{")
               and 'model="remote-mlx:latest"' in line)


def test_v1_requests_pass_through_with_the_remote_name(srv):
    from openai import OpenAI

    want = direct_chat(srv, HELLO)
    client = OpenAI(base_url=srv.bridge + "/v1", api_key="unused")
    before = eval_tokens(srv)
    reply = client.chat.completions.create(model="remote-mlx", messages=HELLO, max_tokens=8,
                                           temperature=0)
    assert reply.model == SEED_REPO  # mlx_lm.server's own answer, the model renamed on the way
    assert reply.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert reply.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    streamed = client.chat.completions.create(model="remote-mlx", messages=HELLO, max_tokens=8,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        reply.choices[0].message.content
    # the request log counts the passed-through answers' tokens (from their `usage`)
    assert wait_until(lambda: eval_tokens(srv) == before + 16), (eval_tokens(srv), before)


def test_health_probes_the_endpoint_as_openai(srv):
    health = requests.get(srv.bridge + "/health", timeout=10).json()
    (endpoint,) = health["backends"]["remote"]
    assert endpoint["endpoint_url"] == srv.mlx and endpoint["protocol"] == "openai"
    assert endpoint["reachable"] is True and endpoint["backend"] == "mlx"
    assert endpoint["models"] == ["remote-mlx:latest", "remote-think:latest",
                                  "remote-tools:latest"]


def test_what_the_engine_cannot_do_is_a_clear_error(srv):
    # mlx_lm.server has no /v1/embeddings: Ollama's 404 shape, saying where it was asked
    embed = native(srv, "/api/embed", {"model": "remote-mlx", "input": "hi"})
    assert embed.status_code == 404
    assert "OpenAI-protocol endpoint " + srv.mlx in embed.json()["error"]
    # a request field the remote cannot honour is a 400, never silently dropped
    templ = native(srv, "/api/generate", {"model": "remote-mlx", "prompt": "x",
                                          "template": "{{ .Prompt }}"})
    assert templ.status_code == 400 and "'template'" in templ.json()["error"]
    logprobs = native(srv, "/api/chat", {"model": "remote-mlx", "messages": HELLO,
                                         "logprobs": True})
    assert logprobs.status_code == 400 and "logprobs" in logprobs.json()["error"]
    copy = native(srv, "/api/copy", {"source": "remote-mlx", "destination": "other"})
    assert copy.status_code == 400 and "OpenAI protocol" in copy.json()["error"]
    assert native(srv, "/api/chat", {"model": "remote-mlx", "messages": HELLO, "stream": False,
                                     "options": GREEDY}).status_code == 200


def test_a_hang_up_ends_the_remote_generation(srv):
    """A client that hangs up, streamed or not, ends the request to the remote engine (about
    30 s of generation asked for): recorded as canceled within seconds, not as a finished one."""
    host, port = srv.bridge.removeprefix("http://").split(":")
    for stream in (False, True):
        body = json.dumps({"model": "remote-mlx", "messages": HELLO, "stream": stream,
                           "options": {"num_predict": 20000}}).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (host.encode(), port.encode(), len(body), body))
            time.sleep(1.0)

    def canceled() -> list[dict]:
        data = requests.get(srv.bridge + "/api/performance/comparison", timeout=10,
                            params={"model": "remote-mlx"}).json()["models"]
        return [b for m in data for b in m["backends"] if b["canceled"]]

    assert wait_until(lambda: sum(b["canceled"] for b in canceled()) == 2, timeout=15)
    # the remote is free again at once: a short request is answered promptly
    started = time.monotonic()
    assert native(srv, "/api/chat", {"model": "remote-mlx", "messages": HELLO, "stream": False,
                                     "options": GREEDY}).status_code == 200
    assert time.monotonic() - started < 5


# ---- the conversion's corners, without servers ---------------------------------------------

def test_messages_tie_tool_results_to_their_calls():
    native_msgs = [
        {"role": "user", "content": "look", "images": ["iVBORw0KGgo="]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"function": {"name": "b", "arguments": {}}}]},
        {"role": "tool", "tool_name": "b", "content": "B"},
        {"role": "tool", "content": "A"},
    ]
    out = openai_request.messages(native_msgs)
    assert out[0]["content"] == [{"type": "text", "text": "look"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    calls = out[1]["tool_calls"]
    assert [c["function"] for c in calls] == [{"name": "a", "arguments": '{"x": 1}'},
                                              {"name": "b", "arguments": "{}"}]
    assert out[2]["tool_call_id"] == calls[1]["id"] and out[3]["tool_call_id"] == calls[0]["id"]


def test_options_format_and_fragmented_tool_calls():
    call = openai_request.convert("/api/chat", json.dumps({
        "model": "m", "messages": HELLO, "format": {"type": "object"}, "think": "high",
        "options": {"num_predict": -1, "top_k": 5, "repeat_penalty": 1.1, "num_ctx": 4096},
    }).encode(), "m", "remote/m", {"temperature": 0.2, "num_predict": 9})
    body = call.body
    assert body["model"] == "remote/m" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_k"], body["repetition_penalty"]) == (0.2, 5, 1.1)
    assert "max_tokens" not in body and "num_ctx" not in body  # -1: the remote's own limit
    assert body["reasoning_effort"] == "high"
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    answer = openai_remote.Answer(call, opened_ns=0)
    for args in ('{"ci', 'ty": "Paris"}'):
        answer.feed({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "id": "c1" if args.startswith("{") else None,
             "function": {"name": "get_weather" if args.startswith("{") else None,
                          "arguments": args}}]}}]})
    answer.feed({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
    answer.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    merged = answer.merged()
    assert merged["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "get_weather",
                                  "arguments": {"city": "Paris"}}}]
    assert (merged["done_reason"], merged["prompt_eval_count"], merged["eval_count"]) == (
        "stop", 3, 4)


def test_a_remote_answer_of_the_wrong_shape_is_a_502():
    call = openai_request.convert("/api/chat", json.dumps({"model": "m", "messages": HELLO})
                                 .encode(), "m", "m", {})
    answer = openai_remote.Answer(call, opened_ns=0)
    with pytest.raises(openai_stream.UpstreamError, match="unexpected shape"):
        openai_stream.checked(answer.feed, {"choices": [{"delta": ["not", "an", "object"]}]})
    embed = openai_request.convert("/api/embed", b'{"model": "m", "input": "x"}', "m", "m", {})
    with pytest.raises(openai_stream.UpstreamError, match="unexpected shape"):
        openai_stream.checked(openai_remote.embed_answer, embed, {"data": [7]}, 0)


def test_a_remote_that_answers_one_json_object_is_converted_too():
    call = openai_request.convert("/api/chat", json.dumps({"model": "m", "messages": HELLO,
                                                          "stream": False}).encode(), "m", "m", {})
    answer = openai_remote.Answer(call, opened_ns=0)
    answer.feed(openai_stream.as_chunk({"choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "calling", "tool_calls": [
            {"id": "a", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "function": {"name": "g", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7}}))
    merged = answer.merged()
    assert merged["message"]["content"] == "calling"
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in merged["message"]["tool_calls"]] == [("a", "f", {}), ("b", "g", {"x": 1})]
    assert (merged["prompt_eval_count"], merged["eval_count"]) == (5, 7)


def test_n_reaches_a_remote_engine_as_sent(srv):
    """`n` > 1 is the bridge's 400 only for its own models: a remote engine gets the body as
    sent (it may answer several choices; mlx_lm.server answers one)."""
    r = requests.post(srv.bridge + "/v1/chat/completions", timeout=120, json={
        "model": "remote-mlx", "messages": HELLO, "max_tokens": 4, "temperature": 0, "n": 2})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == SEED_REPO


def test_a_tool_choice_the_bridge_cannot_carry_out_reaches_a_remote_engine(srv):
    """A tool_choice form the bridge's layer does not know is its 400 only for its own models;
    the remote engine gets the body as sent (mlx_lm.server ignores tool_choice)."""
    body = {"model": "remote-mlx", "messages": HELLO, "max_tokens": 4, "temperature": 0,
            "tools": [WEATHER_TOOL], "tool_choice": {"type": "custom", "custom": {"name": "x"}}}
    r = requests.post(srv.bridge + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == SEED_REPO
