"""Requests of clients too heavy for the `test` extra, replayed byte-for-byte over HTTP.

LiteLLM (1.110.2; ~200 MB with boto3) and Continue.dev (a VS Code extension) are not installed
here. The bodies below are what they send, captured from LiteLLM through a logging proxy during
the client sweep (docs/clients.md) and read from Continue's source; each test names the source
file that builds it and asserts the fields that file reads back. The server is the session's
`protocol_bridges` bridge: the tiny model and the scripted `tools` / `think` models.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

from .scripted_model import ANSWER, HELLO, THOUGHT, WEATHER

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "w",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
ASK = {"role": "user", "content": "weather?", "images": []}


@pytest.fixture(scope="module")
def url(protocol_bridges) -> str:
    return protocol_bridges[0]


def post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(url + path, json=body, timeout=60)


def ndjson(resp: requests.Response) -> list[dict]:
    """Continue splits the body on "\\n" and JSON-parses every non-blank piece."""
    return [json.loads(line) for line in resp.text.split("\n") if line.strip()]


# --- LiteLLM: litellm/llms/ollama/chat/transformation.py (`ollama_chat/<m>`) -------------------

def test_litellm_ollama_chat_tool_round_trip(url):
    """`images: []` on every message, `options: {}`, `stream: false`; the assistant's call comes
    back with an `id` and no `type`, the result as `role: tool` + `tool_call_id` (no tool_name)."""
    first = post(url, "/api/chat", {"model": "tools", "messages": [ASK], "options": {},
                                    "stream": False, "tools": TOOLS})
    assert first.status_code == 200, first.text
    [call] = first.json()["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    replay = [ASK, {"role": "assistant", "content": "", "images": [],
                    "tool_calls": [{"id": call["id"], "function": {
                        "name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": WEATHER, "images": [], "tool_call_id": call["id"]}]
    second = post(url, "/api/chat", {"model": "tools", "messages": replay, "options": {},
                                     "stream": False, "tools": TOOLS})
    body = second.json()
    assert second.status_code == 200 and body["message"]["content"] == ANSWER
    # usage: transformation.py reads prompt_eval_count and eval_count
    assert body["prompt_eval_count"] > 0 and body["eval_count"] > 0


def test_litellm_ollama_chat_reasoning_effort_streamed_as_think_true(url):
    """`reasoning_effort` becomes `think: true`; the stream's `message.thinking` becomes
    `reasoning_content`, and the final chunk's counts become usage."""
    resp = requests.post(url + "/api/chat", json={
        "model": "think", "messages": [{"role": "user", "content": "hi", "images": []}],
        "options": {}, "stream": True, "think": True}, stream=True, timeout=60)
    lines = [json.loads(x) for x in resp.iter_lines() if x]
    thinking = "".join(x["message"].get("thinking", "") for x in lines)
    content = "".join(x["message"]["content"] for x in lines)
    assert (thinking, content) == (THOUGHT, HELLO)
    final = lines[-1]
    assert final["done"] is True
    assert isinstance(final["prompt_eval_count"], int) and isinstance(final["eval_count"], int)


def test_litellm_sampling_options_as_mapped(url):
    """transformation.py maps frequency_penalty to `repeat_penalty` (0.1 here) and max_tokens to
    `num_predict`: all accepted."""
    resp = post(url, "/api/chat", {"model": "tiny", "messages": [ASK], "options": {
        "temperature": 0.1, "top_p": 0.9, "stop": ["x"], "num_predict": 3,
        "repeat_penalty": 0.1, "seed": 1}, "stream": False})
    assert resp.status_code == 200 and resp.json()["eval_count"] <= 3


# --- LiteLLM: litellm/llms/ollama/completion/transformation.py and handler.py (`ollama/<m>`) ---

def test_litellm_ollama_generate_with_tools_in_the_prompt_and_format_json(url):
    """`ollama/<m>` with tools writes them into the prompt and asks for `format: "json"`; it then
    json-loads `response` as a call. Usage comes from prompt_eval_count / eval_count."""
    prompt = ("### User:\nweather?\n\n### System:\nTo call a function, reply with JSON ONLY in "
              "this format {\"name\": \"function_name\", \"arguments\":{\"argument_name\": "
              "\"argument_value\"}}. The following functions are available to you:\n"
              + str(TOOLS[0]) + "\n\n\n")
    resp = post(url, "/api/generate", {"model": "tiny", "prompt": prompt,
                                       "options": {"num_predict": 8}, "stream": False,
                                       "format": "json", "images": []})
    body = resp.json()
    assert resp.status_code == 200 and body["done"] is True
    assert body["response"].lstrip().startswith("{")  # the JSON grammar is in force
    assert body["prompt_eval_count"] > 0 and body["eval_count"] > 0


def test_litellm_embedding_and_model_info(url):
    """handler.py posts `{"model", "input": [...]}` to /api/embed and reads `embeddings` and
    `prompt_eval_count`; common_utils.py posts `{"name"}` to /api/show and reads the first
    `model_info` key containing `context_length`, and "tools" in `template`."""
    emb = post(url, "/api/embed", {"model": "tiny", "input": ["hi", "there"]}).json()
    assert len(emb["embeddings"]) == 2 and emb["prompt_eval_count"] > 0
    show = post(url, "/api/show", {"name": "tools"}).json()
    lengths = [v for k, v in show["model_info"].items() if "context_length" in k]
    assert lengths and lengths[0] > 0
    assert "tools" in show["template"].lower()


# --- Continue.dev: core/llm/llms/Ollama.ts (continuedev/continue) ------------------------------

def test_continue_show_parameters_parse_with_its_regex(url):
    """The constructor posts `{"name"}` and runs every `parameters` line through
    /^(\\S+)\\s+((?:".*")|\\S+)$/, reading `parts.length` unguarded: one line that does not match
    throws, and FIM detection (`template` contains ".Suffix") is then never reached."""
    for model in ("tiny", "tools", "think"):
        show = post(url, "/api/show", {"name": model}).json()
        for line in show["parameters"].split("\n"):
            parts = re.match(r'^(\S+)\s+((?:".*")|\S+)$', line)
            assert parts, line
            if parts[1] == "stop":
                json.loads(parts[2])  # Continue JSON.parses each stop value


def test_continue_chat_without_stream_streams_ndjson(url):
    """`stream: options.stream` is usually undefined, so JSON.stringify drops it: the default must
    be a stream. `keep_alive` is a number (1800) and options carry num_ctx and undefined keys
    (dropped). Every line parses and carries `message.role` that is never `tool`."""
    resp = post(url, "/api/chat", {
        "model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "hi"}],
        "options": {"num_predict": 3, "num_ctx": 8192}, "keep_alive": 1800})
    lines = ndjson(resp)
    assert resp.status_code == 200 and len(lines) > 1 and lines[-1]["done"] is True
    assert all(x["message"]["role"] == "assistant" for x in lines)


def test_continue_tools_turn_is_not_streamed(url):
    """With tools and a user message last, Continue forces `stream: false` and JSON.stringifies
    each `tool_calls[].function.arguments` object."""
    resp = post(url, "/api/chat", {
        "model": "tools", "messages": [{"role": "user", "content": "weather?"}],
        "options": {"num_ctx": 8192}, "keep_alive": 1800, "stream": False,
        "tools": [{"type": "function", "function": TOOLS[0]["function"]}]})
    message = resp.json()["message"]
    assert message["role"] == "assistant"
    assert json.loads(json.dumps(message["tool_calls"][0]["function"]["arguments"])) == {
        "city": "Paris"}


def test_continue_complete_and_unknown_model(url):
    """`_streamComplete`: /api/generate with `raw` and no `stream`; an unknown model's 404 must
    match Continue's /model '(.*)' not found/."""
    resp = post(url, "/api/generate", {"model": "tiny", "prompt": "def f(", "raw": True,
                                       "options": {"num_predict": 3, "num_ctx": 8192},
                                       "keep_alive": 1800})
    lines = ndjson(resp)
    assert lines[-1]["done"] is True and all("response" in x for x in lines)
    missing = post(url, "/api/chat", {"model": "nope", "messages": []})
    assert missing.status_code == 404
    assert re.search(r"model '(.*)' not found", missing.json()["error"])[1] == "nope"
