"""/v1/chat/completions `tool_choice` and `parallel_tool_calls` through the official `openai` SDK
against a real server.

Found by the client audit: the chat layer dropped both (as Ollama does), so "required" or a named
function could answer without a call, "none" with one, and `parallel_tool_calls: false` with
several, while /v1/messages and /v1/responses honour them. The random tiny model never calls a
tool by itself; the scripted `tools` model always writes one, `twice` a call after every call
(tests/scripted_model.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import openai
import pytest

from .helpers import start_server, stop_server, write_mappings
from .scripted_model import CALL, NEWLINE, TOOLS_TEMPLATE, build_scripted_model, scripted_models

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"]}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": CITY}}
Q = [{"role": "user", "content": "What is the weather in Paris?"}]
# Greedy; a forced call on the random model ends within ~40 tokens (the string is capped at 8).
KW = {"messages": Q, "tools": [TOOL], "temperature": 0, "max_tokens": 100}


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("clientaudit-tools")
    twice = build_scripted_model(root / "twice", {NEWLINE: "<tool_call>", "<tool_call>": CALL,
                                                  CALL: "</tool_call>", "</tool_call>": NEWLINE},
                                 TOOLS_TEMPLATE)
    models = {**scripted_models(root, tiny_model_dir),
              "twice": {"mlx": str(twice), "backend": "mlx"}}
    mappings = write_mappings(root / "map.yaml", models)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    try:
        yield openai.OpenAI(base_url=url + "/v1", api_key="not-checked", max_retries=0)
    finally:
        stop_server(proc)


def test_required_and_named_tool_choice_force_a_call(client):
    free = client.chat.completions.create(model="tiny", **KW)
    assert free.choices[0].finish_reason != "tool_calls" and not free.choices[0].message.tool_calls
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        out = client.chat.completions.create(model="tiny", tool_choice=choice, **KW)
        assert out.choices[0].finish_reason == "tool_calls", choice
        (call,) = out.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), CITY)


def test_forced_call_streams(client):
    chunks = list(client.chat.completions.create(model="tiny", tool_choice="required",
                                                 stream=True, **KW))
    calls = [c for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


def test_tool_choice_none_hides_the_tools(client):
    """The scripted model writes its <tool_call> text anyway; with no tools it stays text."""
    out = client.chat.completions.create(model="tools", tool_choice="none", **KW)
    assert out.choices[0].finish_reason == "stop" and not out.choices[0].message.tool_calls
    assert "<tool_call>" in out.choices[0].message.content
    auto = client.chat.completions.create(model="tools", tool_choice="auto", **KW)
    assert auto.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("choice,text", [
    ({"type": "function", "function": {"name": "absent"}}, "'absent' is not one of the tools"),
    ("sometimes", "invalid tool_choice"),
])
def test_bad_tool_choice_is_a_400(client, choice, text):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", tool_choice=choice, **KW)
    assert text in err.value.body["message"]


def test_allowed_tools_shows_and_forces_a_subset():
    from bridge.wire.openai_in import tool_choice

    other = {"type": "function", "function": {"name": "get_time", "parameters": CITY}}
    subset = {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]}}
    assert tool_choice(subset, [TOOL, other]) == (["get_time"], [other])
    subset["allowed_tools"]["mode"] = "auto"
    assert tool_choice(subset, [TOOL, other]) == ([], [other])


def test_parallel_tool_calls_false_keeps_one_call(client):
    """`twice` writes two whole calls in 8 tokens (then runs out: finish_reason length)."""
    kw = {"model": "twice", "messages": Q, "tools": [TOOL], "temperature": 0, "max_tokens": 8}
    both = client.chat.completions.create(**kw)
    assert [c.function.name for c in both.choices[0].message.tool_calls] == ["get_weather"] * 2
    one = client.chat.completions.create(parallel_tool_calls=False, **kw)
    assert len(one.choices[0].message.tool_calls) == 1
    chunks = list(client.chat.completions.create(parallel_tool_calls=False, stream=True, **kw))
    calls = [c for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or []]
    assert len(calls) == 1
