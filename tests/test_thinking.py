"""Thinking: the streaming splitter, and reasoning split out of real generations.

The `think` model is a scripted tiny model (tests/scripted_model.py): its template supports
`enable_thinking` and it answers `<think>Let me think.</think>Hello there.`.
"""

from __future__ import annotations

import json

import pytest

from bridge.serving.thinking import ThinkingSplitter, split_text

from .scripted_model import HELLO, THOUGHT, scripted_models, start_app

Q = [{"role": "user", "content": "What is the weather?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("thinking")
    app = start_app(root, scripted_models(root, tiny_model_dir))
    yield app.test_client()
    app.extensions["bridge"].stop()


def stream_pieces(text: str, size: int, **kw) -> tuple[str, str]:
    splitter = ThinkingSplitter("<think>", "</think>", **kw)
    thinking = content = ""
    for i in range(0, len(text), size):
        out = splitter.feed(text[i:i + size])
        thinking, content = thinking + out.thinking, content + out.content
    out = splitter.flush()
    return thinking + out.thinking, content + out.content


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_splitter_gives_the_same_split_for_any_chunking(size):
    text = "\n <think>\n step one\n\n step two \n</think>\n\n The answer is 4."
    assert stream_pieces(text, size) == ("step one\n\n step two", "The answer is 4.")


def test_splitter_without_opening_marker_is_all_content():
    assert stream_pieces("Just an answer <think> not a marker here", 2) == (
        "", "Just an answer <think> not a marker here")
    assert split_text("<thi", "<think>", "</think>").content == "<thi"


def test_splitter_prompt_already_in_thinking_and_unclosed_thinking():
    assert stream_pieces("reasoning...</think>done", 3,
                         in_thinking=True) == ("reasoning...", "done")
    assert stream_pieces("<think>never closed  ", 4) == ("never closed", "")


def test_capabilities_say_thinking_only_when_true(client):
    caps = {name: client.post("/api/show", json={"model": name}).get_json()["capabilities"]
            for name in ("think", "tools", "tiny")}
    assert "thinking" in caps["think"] and "tools" not in caps["think"]
    assert "thinking" not in caps["tools"] and "thinking" not in caps["tiny"]


@pytest.mark.parametrize("think", [True, "high", None])
def test_chat_splits_thinking_from_content(client, think):
    body = {"model": "think", "messages": Q, "stream": False,
            **({} if think is None else {"think": think})}
    msg = client.post("/api/chat", json=body).get_json()["message"]
    assert msg == {"role": "assistant", "content": HELLO, "thinking": THOUGHT}


def test_streamed_chat_sends_thinking_then_content(client):
    resp = client.post("/api/chat", json={"model": "think", "messages": Q, "think": True})
    lines = [json.loads(x) for x in resp.get_data(as_text=True).splitlines()]
    assert [line["message"].get("thinking", "") for line in lines[:-1]] == [THOUGHT, ""]
    assert "".join(line["message"]["content"] for line in lines) == HELLO
    assert "<think>" not in resp.get_data(as_text=True)
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


def test_think_false_renders_the_template_without_reasoning(client):
    msg = client.post("/api/chat", json={"model": "think", "messages": Q, "think": False,
                                         "stream": False}).get_json()["message"]
    assert msg == {"role": "assistant", "content": HELLO}


def test_generate_with_a_raw_prompt_that_opens_the_think_block(client):
    """The prompt ends inside <think>: the engine reports it, so the output starts as thinking."""
    out = client.post("/api/generate", json={"model": "think",
                                             "prompt": "<|im_start|>assistant\n<think>",
                                             "raw": True, "stream": False}).get_json()
    assert (out["thinking"], out["response"]) == (THOUGHT, HELLO)
    streamed = client.post("/api/generate", json={
        "model": "think", "prompt": "<|im_start|>assistant\n<think>", "raw": True})
    lines = [json.loads(x) for x in streamed.get_data(as_text=True).splitlines()]
    assert "".join(x.get("thinking", "") for x in lines) == THOUGHT
    assert "".join(x["response"] for x in lines) == HELLO


def test_non_thinking_model_rejects_think(client):
    resp = client.post("/api/chat", json={"model": "tiny", "messages": Q, "think": True})
    assert (resp.status_code == 400
            and resp.get_json() == {"error": '"tiny" does not support thinking'})
    ok = client.post("/api/chat", json={"model": "tiny", "messages": Q, "think": False,
                                        "stream": False, "options": {"num_predict": 3}})
    assert ok.status_code == 200 and "thinking" not in ok.get_json()["message"]


def test_v1_reasoning_and_reasoning_effort(client):
    body = {"model": "think", "messages": Q}
    msg = client.post("/v1/chat/completions", json=body).get_json()["choices"][0]["message"]
    assert (msg["reasoning"], msg["content"]) == (THOUGHT, HELLO)
    off = client.post("/v1/chat/completions", json={**body, "reasoning_effort": "none"}).get_json()
    assert off["choices"][0]["message"] == {"role": "assistant", "content": HELLO}
    events = sse(client.post("/v1/chat/completions",
                             json={**body, "stream": True, "reasoning_effort": "high"}))
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0] == {"role": "assistant", "reasoning": THOUGHT}
    assert deltas[1] == {"content": HELLO} and deltas[-1] == {}
    bad = client.post("/v1/chat/completions", json={**body, "reasoning_effort": "loads"})
    assert bad.status_code == 400 and bad.get_json()["error"]["type"] == "invalid_request_error"
    refused = client.post("/v1/chat/completions",
                          json={"model": "tiny", "messages": Q, "reasoning_effort": "low"})
    assert (refused.status_code == 400
            and "does not support thinking" in refused.get_json()["error"]["message"])


def test_thinking_then_schema_constrained_answer(client):
    """With a format, the grammar starts after the think block: reasoning stays free."""
    schema = {"type": "object", "properties": {"mood": {"enum": ["sunny", "rainy"]}},
              "required": ["mood"], "additionalProperties": False}
    out = client.post("/api/chat", json={"model": "think", "messages": Q, "think": True,
                                         "format": schema, "stream": False,
                                         "options": {"temperature": 0}}).get_json()
    assert out["message"]["thinking"] == THOUGHT
    assert json.loads(out["message"]["content"])["mood"] in ("sunny", "rainy")
    assert out["done_reason"] == "stop"


def sse(resp) -> list[dict]:
    text = resp.get_data(as_text=True)
    assert (resp.headers["Content-Type"].startswith("text/event-stream")
            and text.endswith("data: [DONE]\n\n"))
    return [json.loads(e[len("data: "):]) for e in text.split("\n\n") if e and e != "data: [DONE]"]
