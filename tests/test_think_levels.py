"""Think levels reach the chat template as the variables it reads, on every protocol layer.

Each model here is a scripted tiny model (tests/scripted_model.py) whose template ends the
generation prompt with one added token naming what it received, e.g. `EFFORT=high`; the model
answers that token with `said-high`. So the answer text shows, through a real server process,
what the request's `think` (or `reasoning_effort`, `reasoning.effort`, Anthropic's effort and
thinking) became in the template: `reasoning_effort` (gpt-oss style), `enable_thinking`
(Qwen3 style) or `thinking` (DeepSeek-V3.1 style).
"""

from __future__ import annotations

import pytest
import requests

from bridge.modelinfo.tokenizer import think_switches
from bridge.serving.thinking import template_switches
from bridge.testing import EOS_TOKEN

from .conftest import start_server, stop_server, write_mappings
from .scripted_model import CHATML, build_scripted_model

LEVELS = ("low", "medium", "high", "unset")


def template(variable: str, shown: str) -> str:
    """ChatML, then a generation prompt ending in `<tag>=<the variable's value or unset>`."""
    value = (f"(({variable} | string) if {variable} is defined else 'unset')" if shown == "value"
             else f"(('on' if {variable} else 'off') if {variable} is defined else 'unset')")
    return CHATML + ("{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                     f"{{{{- '{variable.upper()}=' + {value} }}}}{{%- endif %}}")


def script(variable: str, values: tuple[str, ...]) -> dict[str, str]:
    tag = variable.upper()
    chain = {f"{tag}={v}": f"said-{v}" for v in values}
    return {**chain, **{f"said-{v}": EOS_TOKEN for v in values}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("think-levels")
    models = {
        "effort": build_scripted_model(root / "effort", script("reasoning_effort", LEVELS),
                                       template("reasoning_effort", "value")),
        "qwen": build_scripted_model(root / "qwen", script("enable_thinking", ("on", "off",
                                                                               "unset")),
                                     template("enable_thinking", "switch")),
        "ds": build_scripted_model(root / "ds", script("thinking", ("on", "off", "unset")),
                                   template("thinking", "switch")),
    }
    mapping = {name: {"mlx": str(path), "backend": "mlx"} for name, path in models.items()}
    mapping["plain"] = {"mlx": str(tiny_model_dir), "backend": "mlx"}
    path = write_mappings(root / "map.yaml", mapping)
    proc, url = start_server(["--mappings", str(path), "--home", str(root / "home"),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


def chat(url: str, model: str, **extra) -> requests.Response:
    return requests.post(f"{url}/api/chat", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"temperature": 0, "num_predict": 4}, **extra}, timeout=60)


def answer(resp: requests.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["message"]["content"].strip()


# --- the mapping itself (pure) --------------------------------------------------------------

def test_switches_read_from_the_template():
    assert think_switches(template("reasoning_effort", "value")) == ("reasoning_effort",)
    assert think_switches(template("enable_thinking", "switch")) == ("enable_thinking",)
    assert think_switches(template("thinking", "switch")) == ("thinking",)
    assert think_switches(CHATML) == ()


@pytest.mark.parametrize(("think", "switches", "expected"), [
    (None, ("reasoning_effort",), {}),
    ("max", ("reasoning_effort",), {"enable_thinking": True, "reasoning_effort": "high"}),
    (True, ("reasoning_effort",), {"enable_thinking": True}),
    (False, ("reasoning_effort",), {"enable_thinking": False, "reasoning_effort": "low"}),
    (False, ("enable_thinking", "reasoning_effort"), {"enable_thinking": False}),
    ("low", ("thinking",), {"enable_thinking": True, "thinking": True}),
])
def test_template_switches(think, switches, expected):
    assert template_switches(think, switches) == expected


# --- through a real server ------------------------------------------------------------------

@pytest.mark.parametrize(("think", "said"), [
    ("low", "said-low"), ("medium", "said-medium"), ("high", "said-high"),
    ("max", "said-high"), (True, "said-unset"), (None, "said-unset"), (False, "said-low"),
])
def test_native_think_levels_become_reasoning_effort(server, think, said):
    extra = {} if think is None else {"think": think}
    assert answer(chat(server, "effort", **extra)) == said


def test_generate_maps_levels_too(server):
    r = requests.post(f"{server}/api/generate", json={
        "model": "effort", "prompt": "hi", "think": "medium", "stream": False,
        "options": {"temperature": 0, "num_predict": 4}}, timeout=60)
    assert r.status_code == 200 and r.json()["response"].strip() == "said-medium"


@pytest.mark.parametrize(("model", "think", "said"), [
    ("qwen", "low", "said-on"), ("qwen", "max", "said-on"), ("qwen", False, "said-off"),
    ("ds", "high", "said-on"), ("ds", False, "said-off"),
    ("ds", None, "said-unset"),
])
def test_levels_switch_on_off_templates(server, model, think, said):
    extra = {} if think is None else {"think": think}
    assert answer(chat(server, model, **extra)) == said


def test_models_reading_a_switch_have_the_thinking_capability(server):
    for model in ("effort", "ds"):
        caps = requests.post(f"{server}/api/show", json={"model": model}, timeout=30).json()
        assert "thinking" in caps["capabilities"], model


@pytest.mark.parametrize("think", ["low", "high", "max", True])
def test_model_without_thinking_is_400_as_ollama(server, think):
    r = chat(server, "plain", think=think)
    assert r.status_code == 400
    assert r.json() == {"error": '"plain" does not support thinking'}


def test_generate_on_a_model_without_thinking_is_400_too(server):
    r = requests.post(f"{server}/api/generate", json={"model": "plain", "prompt": "hi",
                                                      "think": "medium", "stream": False},
                      timeout=30)
    assert r.status_code == 400 and r.json() == {"error": '"plain" does not support thinking'}


def test_think_false_on_a_model_without_thinking_is_fine(server):
    assert chat(server, "plain", think=False).status_code == 200


@pytest.mark.parametrize("think", ["extreme", "LOWER", 3])
def test_unknown_think_values_are_400(server, think):
    r = chat(server, "effort", think=think)
    assert r.status_code == 400
    if isinstance(think, str):
        assert r.json()["error"] == (f'invalid think value: "{think}" (must be "high", "medium", '
                                     '"low", "max", true, or false)')


@pytest.mark.parametrize(("effort", "said"), [
    ("minimal", "said-low"), ("low", "said-low"), ("medium", "said-medium"),
    ("xhigh", "said-high"), ("none", "said-low"),
])
def test_v1_reasoning_effort_maps_like_native_levels(server, effort, said):
    r = requests.post(f"{server}/v1/chat/completions", json={
        "model": "effort", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "temperature": 0, "reasoning_effort": effort}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip() == said


def test_responses_reasoning_effort(server):
    r = requests.post(f"{server}/v1/responses", json={
        "model": "effort", "input": "hi", "max_output_tokens": 4, "temperature": 0,
        "reasoning": {"effort": "high"}}, timeout=60)
    assert r.status_code == 200, r.text
    texts = [c["text"] for item in r.json()["output"] if item["type"] == "message"
             for c in item["content"]]
    assert "".join(texts).strip() == "said-high"


@pytest.mark.parametrize(("extra", "said"), [
    ({"output_config": {"effort": "xhigh"}}, "said-high"),
    ({"output_config": {"effort": "low"}}, "said-low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "said-unset"),
    ({"thinking": {"type": "disabled"}}, "said-low"),
])
def test_anthropic_effort_and_thinking(server, extra, said):
    r = requests.post(f"{server}/v1/messages", json={
        "model": "effort", "max_tokens": 2048, "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}], **extra}, timeout=60)
    assert r.status_code == 200, r.text
    texts = [b["text"] for b in r.json()["content"] if b["type"] == "text"]
    assert "".join(texts).strip() == said
