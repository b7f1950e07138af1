"""The tool-capable ChatML template GGUF imports of SmolLM2 / Qwen2.5 get
(importer/chat_templates.py): chats without tools render exactly as the GGUF's own template
does, tools render Hermes-style as Ollama's template does, the capability appears, and a
`<tool_call>` the model writes comes back as `message.tool_calls` (a scripted tiny model through
the real engine)."""

from __future__ import annotations

import json

import pytest

from bridge.importer import import_model
from bridge.importer.chat_templates import chatml_tools_template, render, with_tools
from bridge.modelinfo.describe import describe_model
from bridge.testing import build_tiny_model

from .gguf_fixtures import bpe_tokenizer_meta, random_weights, write_gguf
from .scripted_model import TOOLS_SCRIPT, build_scripted_model, start_app

# A GGUF's own template in SmolLM2's shape: ChatML with a default system turn and no tools.
OWN = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
       "{{ '<|im_start|>system\nYou are Tiny.<|im_end|>\n' }}{% endif %}"
       "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
       "{% endfor %}"
       "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CFG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "max_position_embeddings": 512}
CHATS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}],
]


def test_chats_without_tools_render_exactly_as_the_models_own_template():
    tools_template = with_tools(OWN)
    assert tools_template == chatml_tools_template("You are Tiny.")
    for chat in CHATS:
        for gen in (True, False):
            assert render(tools_template, chat, gen) == render(OWN, chat, gen)


def test_tools_render_in_the_system_turn_and_calls_and_results_hermes_style():
    chat = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "Sunny"}]
    out = render(chatml_tools_template("You are Tiny."), chat, tools=[WEATHER])
    assert out == (
        "<|im_start|>system\nYou are Tiny.\n\n# Tools\n\nYou may call one or more functions "
        "to assist with the user query.\n\nYou are provided with function signatures within "
        "<tools></tools> XML tags:\n<tools>\n"
        f"{json.dumps(WEATHER)}\n</tools>\n\nFor each function call, return a json object "
        "with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nSunny\n"
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")


def test_templates_that_are_not_plain_chatml_are_left_alone():
    zephyr = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
              "{% endfor %}<|assistant|>\n")
    assert with_tools(zephyr) is None
    trimmed = OWN.replace("message['content']", "message['content'] | trim")  # changes a prompt
    assert with_tools(trimmed) is None


@pytest.fixture(scope="module")
def tiny_gguf_tok(tmp_path_factory):
    tok_dir = build_tiny_model(tmp_path_factory.mktemp("tok") / "tok")
    return bpe_tokenizer_meta(tok_dir / "tokenizer.json")


@pytest.mark.parametrize(("basename", "gets_tools"), [("smollm2", True), ("Qwen2.5", True),
                                                      ("tinyllama", False)])
def test_gguf_import_gives_the_families_ollama_serves_with_tools_the_tool_template(
        tmp_path, tiny_gguf_tok, basename, gets_tools):
    cfg = {**CFG, "vocab_size": len(tiny_gguf_tok["tokens"])}
    gguf = write_gguf(tmp_path / "m.gguf", "llama", cfg, random_weights("llama", cfg),
                      tiny_gguf_tok, chat_template=OWN, strings={"general.basename": basename})
    path = import_model(str(gguf), tmp_path / "home", name="m").path
    config = json.loads((path / "tokenizer_config.json").read_text())
    capabilities = describe_model(path).capabilities
    if gets_tools:
        assert config["tool_parser_type"] == "json_tools" and "tools" in capabilities
        assert json.loads((path / "mlx_bridge_import.json").read_text())["tool_template"]
    else:
        assert config["chat_template"] == OWN and "tools" not in capabilities


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("smoltools")
    scripted = build_scripted_model(root / "smol", TOOLS_SCRIPT,
                                    chatml_tools_template("You are Tiny."))
    app = start_app(root, {"smol": {"mlx": str(scripted), "backend": "mlx"}})
    yield app.test_client()
    app.extensions["bridge"].stop()


def test_a_tool_call_the_model_writes_comes_back_parsed(client):
    body = {"model": "smol", "stream": False, "tools": [WEATHER],
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    reply = client.post("/api/chat", json=body)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    message = reply.get_json()["message"]
    assert message["content"] == ""
    assert [c["function"] for c in message["tool_calls"]] == [
        {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert "tools" in client.post("/api/show", json={"model": "smol"}).get_json()["capabilities"]
