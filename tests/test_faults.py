"""Fault injection with real processes: models that fail to load, an upstream killed in the
middle of an OpenAI (SSE) stream, and forwarded streams at the end of the shutdown grace period.

Elsewhere: the state database (test_faults_store), a full or read-only disk (test_faults_disk);
not repeated: the upstream killed mid-NDJSON-stream (test_routing), local streams at shutdown
(test_service_shutdown), store errors in-process (test_store, test_admin_api).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from bridge.testing import build_tiny_model

from .conftest import start_server, stop_server, write_mappings
from .fault_util import (
    assert_serves,
    generate,
)

# ---- models that fail to load ---------------------------------------------------------------


def _corrupt(kind: str, path: Path) -> None:
    weights = path / "model.safetensors"
    if kind == "truncated":  # the header is intact, the data ends early
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif kind == "garbage-config":
        (path / "config.json").write_text("{not json")
    elif kind == "garbage-tokenizer":
        (path / "tokenizer.json").write_text("garbage")
    elif kind == "deleted":
        weights.unlink()


CORRUPT = {  # kind -> what the error must say
    "truncated": "failed to load model: corrupt safetensors header",
    "garbage-config": "failed to load model: unparsable config.json",
    "garbage-tokenizer": "failed to load model: Failed to parse tokenizer.json",
    "deleted": "model 'deleted' not found",
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Another bridge process as the upstream Ollama: healthy copies of the names."""
    root = tmp_path_factory.mktemp("fault-up")
    other = str(build_tiny_model(root / "other", seed=5))
    # writes a line per token (notices a disconnect); 128k context: 50000 tokens are not clamped
    talkative = str(build_tiny_model(root / "slow", max_position_embeddings=1 << 17))
    mappings = write_mappings(root / "m.yaml", {"auto-corrupt": {"mlx": other},
                                                "slow": {"mlx": talkative}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "h"),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def corrupt_bridge(tmp_path_factory, upstream):
    root = tmp_path_factory.mktemp("fault-models")
    dirs = {kind: build_tiny_model(root / kind) for kind in [*CORRUPT, "good", "auto"]}
    models = {kind: {"mlx": str(path), "backend": "mlx"}
              for kind, path in dirs.items() if kind != "auto"}
    models["auto-corrupt"] = {"mlx": str(dirs["auto"]), "backend": "auto"}
    mappings = write_mappings(root / "m.yaml", models, upstream=upstream)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "h")])
    yield url, dirs
    stop_server(proc)


def test_corrupt_models_fail_clearly_and_the_others_keep_answering(corrupt_bridge):
    url, dirs = corrupt_bridge
    listed = {m["name"] for m in requests.get(url + "/api/tags", timeout=10).json()["models"]}
    assert {f"{kind}:latest" for kind in CORRUPT} <= listed  # all fine when listed
    assert_serves(url)
    for kind, message in CORRUPT.items():
        _corrupt(kind, dirs[kind])
        r = generate(url, kind)
        assert (r.status_code == (404 if kind == "deleted" else 500)
                and message in r.json()["error"]), r.text
        chat = requests.post(url + "/api/chat", timeout=60, json={
            "model": kind, "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 4}})
        assert chat.status_code == r.status_code and message in chat.json()["error"]
        assert_serves(url)  # the healthy model is unaffected
    ps = [m["name"] for m in requests.get(url + "/api/ps", timeout=10).json()["models"]]
    assert ps == ["good:latest"]
    health = requests.get(url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["engine"]["active"] == 0


def test_a_corrupt_auto_model_falls_back_to_the_upstream(corrupt_bridge, upstream):
    url, dirs = corrupt_bridge
    _corrupt("truncated", dirs["auto"])
    via = generate(url, "auto-corrupt")
    assert via.status_code == 200, via.text
    assert via.json()["response"] == generate(upstream, "auto-corrupt").json()["response"]


# ---- graceful shutdown: forwarded streams ---------------------------------------------------


def test_forwarded_stream_ends_with_an_error_line_when_the_grace_period_is_over(tmp_path, upstream):
    mappings = write_mappings(tmp_path / "m.yaml", {}, upstream=upstream)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / "h"),
                              "--grace", "1"])
    try:
        body = {"model": "slow", "prompt": "The quick brown fox", "raw": True,
                "options": {"temperature": 0, "num_predict": 50000, "num_ctx": 60000}}
        with requests.post(url + "/api/generate", json=body, stream=True, timeout=60) as resp:
            lines = resp.iter_lines()
            assert "error" not in json.loads(next(lines))
            os.killpg(proc.pid, signal.SIGTERM)
            began = time.monotonic()
            rest = [json.loads(line) for line in lines if line]  # no ChunkedEncodingError
            ended = time.monotonic() - began
        assert rest[-1] == {"error": "server is shutting down"}
        assert not any(line.get("done") for line in rest)
        # the stream ends at the grace period (1 s), before gunicorn would kill the worker (6 s);
        # the process's own exit after that is not timed (seconds on a loaded machine)
        assert ended < 5, f"ended {ended:.1f} s after SIGTERM: when the worker was killed?"
        assert proc.wait(30) == 0
    finally:
        stop_server(proc)


# ---- upstream killed mid-stream: the OpenAI (SSE) flavour -----------------------------------


def test_killing_the_upstream_mid_sse_stream_ends_with_an_error_event(tmp_path, tiny_model_dir):
    """The NDJSON case is test_routing's; an SSE relay must end with an error event the SDK
    raises."""
    import openai

    up_map = write_mappings(tmp_path / "up.yaml", {"far": {"mlx": str(tiny_model_dir)}})
    up_proc, up_url = start_server(["--mappings", str(up_map), "--home", str(tmp_path / "uh"),
                                    "--upstream", "none"])
    proc, url = start_server(["--mappings",
                              str(write_mappings(tmp_path / "m.yaml", {}, upstream=up_url)),
                              "--home", str(tmp_path / "h")])
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model="far", prompt="The quick brown fox",
                                           max_tokens=1900, temperature=0, stream=True)
        seen = 0
        with pytest.raises(openai.APIError, match="upstream connection lost"):
            for _ in stream:
                seen += 1
                if seen == 5:
                    os.killpg(up_proc.pid, signal.SIGKILL)
        assert seen >= 5
        assert requests.get(url + "/api/version", timeout=10).status_code == 200
    finally:
        stop_server(up_proc)
        stop_server(proc)
