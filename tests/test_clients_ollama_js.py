"""ollama-js (npm `ollama`) under node against a real `mlx-bridge serve` process.

The package is installed with npm into a per-user cache on first use (~1 s; it has one small
dependency); with no node, no npm or no reachable registry the tests skip and say so. The calls
live in tests/js/ollama_js_calls.mjs; the models are the session's `protocol_bridges` ones
(tests/scripted_model.py): `tools` calls get_weather and answers its result, `think` thinks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .scripted_model import ANSWER, HELLO, THOUGHT

VERSION = "0.6"  # the ollama-js line checked (docs/clients.md)
SCRIPT = Path(__file__).parent / "js" / "ollama_js_calls.mjs"


@pytest.fixture(scope="module")
def js_dir() -> Path:
    """A folder with node_modules/ollama, kept between runs under the user's cache."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("SKIPPED CLIENT TEST: node/npm not installed (ollama-js needs them)")
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = root / "mlx-bridge-tests" / f"ollama-js-{VERSION}"
    if not (folder / "node_modules" / "ollama" / "package.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text('{"name": "bridge-js-check", "private": true}')
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"ollama@{VERSION}"],
                              cwd=folder, capture_output=True, text=True, timeout=180)
        if done.returncode:
            pytest.skip(f"SKIPPED CLIENT TEST: npm install ollama@{VERSION} failed: "
                        f"{done.stderr[-300:]}")
    shutil.copy(SCRIPT, folder / SCRIPT.name)
    return folder


@pytest.fixture(scope="module")
def results(js_dir, protocol_bridges) -> dict:
    done = subprocess.run(["node", SCRIPT.name, protocol_bridges[0]], cwd=js_dir,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_listing_and_show(results):
    assert results["version"].count(".") == 2
    assert {"tiny:latest", "tools:latest", "think:latest"} <= set(results["tags"])
    assert "tools" in results["show"]


def test_chat_and_streamed_generate(results):
    assert results["chat"] == {"done": True, "eval_count": 3, "role": "assistant"}
    assert results["generate_stream"]["last_done"] is True
    assert results["generate_stream"]["done_reason"] == "length"


def test_tool_call_round_trip(results):
    [call] = results["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    assert results["answer"] == ANSWER


def test_streamed_thinking_and_embeddings(results):
    assert (results["thinking"], results["thought_content"]) == (THOUGHT, HELLO)
    assert results["embed"] == [64, 64]


def test_abort_then_next_request_and_missing_model(results):
    assert results["abort"] == "AbortError" and results["after_abort"] is True
    assert results["missing"] == {"status": 404, "error": "model 'nope' not found"}
