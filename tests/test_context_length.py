"""OLLAMA_CONTEXT_LENGTH: the context window of requests that set no num_ctx, as in Ollama.

A real server with OLLAMA_CONTEXT_LENGTH=48: a long prompt is cut to the window (Ollama keeps the
tail), `num_ctx` in the request still wins, and the config reads the variable like Ollama's.
"""

from __future__ import annotations

import pytest
import requests

from bridge.config import load_config

from .helpers import start_server, stop_server, write_mappings

LONG = "one two three four five six seven eight nine ten " * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ctxlen")
    mappings = write_mappings(root / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir),
                                                           "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"], env={"OLLAMA_CONTEXT_LENGTH": "48"})
    yield url
    stop_server(proc)


def generate(url: str, **options) -> dict:
    r = requests.post(url + "/api/generate", timeout=60, json={
        "model": "tiny", "prompt": LONG, "stream": False, "raw": True,
        "options": {"num_predict": 2, "temperature": 0, **options}})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_request_without_num_ctx_gets_the_configured_window(server):
    assert generate(server)["prompt_eval_count"] <= 48


def test_num_ctx_in_the_request_wins(server):
    assert generate(server, num_ctx=256)["prompt_eval_count"] > 48


def test_the_variable_is_read_like_ollamas():
    assert load_config({"OLLAMA_CONTEXT_LENGTH": "8192"}).context_length == 8192
    assert load_config({}).context_length == 0  # the model's own trained context
    assert load_config({"OLLAMA_CONTEXT_LENGTH": "big"}).context_length == 0  # warned
