"""Remote engines side by side: a real `mlx_lm.server` (OpenAI protocol) and a second bridge (the
Ollama protocol) behind one bridge; the seeds' scenario run as written, the A/B split by weight,
embeddings over the OpenAI protocol, and failover with the breaker when the MLX server dies.

Which engine answered is read from the request log (`/api/performance/comparison`, per backend
and endpoint), the way the seeds compare backends.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from bridge.testing import build_tiny_model

from . import recording_upstream
from .helpers import free_port, start_server, stop_server, wait_until, write_mappings
from .remote_servers import SEED_REPO, hf_cache_with, start_mlx_lm_server

TOKEN = "remote-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GREEDY = {"temperature": 0, "num_predict": 6}
SEED_MODEL = "qwen2.5-coder:7b"


KEY = "sk-remote-0123456789"


@dataclass
class Servers:
    bridge: str
    mlx: str
    mlx_port: int
    ollama: str  # the second bridge, speaking Ollama
    mlx_proc: subprocess.Popen
    recorder: str  # records what reaches it (tests/recording_upstream.py)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("remote-failover")
    hf_home = hf_cache_with(root / "hf", SEED_REPO, tiny_model_dir)
    mlx_proc, mlx_url, mlx_port = start_mlx_lm_server(SEED_REPO, root, {"HF_HOME": str(hf_home)})
    other = build_tiny_model(root / "other", seed=7)  # the Ollama side answers differently
    b_map = write_mappings(root / "b.yaml", {
        name: {"mlx": str(other)} for name in (SEED_MODEL, "ab", "split", "emb", "lacks")})
    rec_proc, rec_url = recording_upstream.start(free_port())
    procs = [mlx_proc]
    try:
        b_proc, b_url = start_server(["--mappings", str(b_map), "--home", str(root / "b"),
                                      "--upstream", "none"])
        procs.append(b_proc)
        a_map = write_mappings(root / "a.yaml", {}, upstream=b_url)
        a_proc, a_url = start_server(["--mappings", str(a_map), "--home", str(root / "a")],
                                     env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN,
                                          "MLX_BRIDGE_KEY_REMOTE": KEY})
        procs.append(a_proc)
        yield Servers(a_url, mlx_url, mlx_port, b_url, mlx_proc, rec_url)
    finally:
        for proc in reversed(procs):
            stop_server(proc)
        rec_proc.kill()  # not a process group of its own
        rec_proc.wait()


def arms(srv: Servers, model: str) -> dict[tuple[str, str], dict]:
    """{(backend, endpoint): stats} of the model in the comparison."""
    data = requests.get(srv.bridge + "/api/performance/comparison", params={"model": model},
                        timeout=10).json()["models"]
    return {(b["backend"], b["endpoint"]): b for m in data for b in m["backends"]}


def counts(srv: Servers, model: str) -> dict[tuple[str, str], int]:
    return {k: v["requests"] for k, v in arms(srv, model).items()}


def add_row(srv: Servers, **row) -> dict:
    resp = requests.post(srv.bridge + "/api/llm-backends", headers=AUTH, json=row, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def chat(url: str, model: str) -> requests.Response:
    return requests.post(url + "/api/chat", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": GREEDY})


# The seeds' configuration guide: mlx_lm.server on 8080 behind an `mlx` row, a generate, the row
# switched to Ollama with PUT, toggled off (the default upstream answers) and on again.
# (command, jq filter, expected output); only the addresses change (and the admin token, which
# writes need since the hardening).
SEED_STEPS = [
    ('curl -s -X POST http://localhost:11434/api/llm-backends -H "Content-Type: application/json" '
     '-H "Authorization: Bearer $MLX_BRIDGE_ADMIN_TOKEN" -d \'{"model_name": "qwen2.5-coder:7b", '
     '"backend_type": "mlx", "endpoint_url": "http://localhost:8080", '
     '"mlx_model": "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit", "priority": 10}\'',
     "jq -r '.endpoint_url'", "http://localhost:8080\n"),
    ("curl -s http://localhost:11434/api/generate -d '{\"model\": \"qwen2.5-coder:7b\", "
     "\"prompt\": \"def fib(n):\", \"stream\": false, \"options\": {\"num_predict\": 16}}'",
     "jq -r '.done'", "true\n"),
    ('curl -s -X PUT http://localhost:11434/api/llm-backends/1 -H "Content-Type: application/json" '
     '-H "Authorization: Bearer $MLX_BRIDGE_ADMIN_TOKEN" -d \'{"backend_type": "ollama", '
     '"endpoint_url": "http://localhost:11435"}\'', "jq -r '.backend_type'", "ollama\n"),
    ("curl -s http://localhost:11434/api/generate -d '{\"model\": \"qwen2.5-coder:7b\", "
     "\"prompt\": \"def fib(n):\", \"stream\": false, \"options\": {\"num_predict\": 16}}'",
     "jq -r '.done'", "true\n"),
    ("curl -s -X POST http://localhost:11434/api/llm-backends/1/toggle "
     '-H "Authorization: Bearer $MLX_BRIDGE_ADMIN_TOKEN"', "jq '.enabled'", "false\n"),
    ("curl -s http://localhost:11434/api/generate -d '{\"model\": \"qwen2.5-coder:7b\", "
     "\"prompt\": \"def fib(n):\", \"stream\": false, \"options\": {\"num_predict\": 16}}'",
     "jq -r '.done'", "true\n"),
    ("curl -s -X POST http://localhost:11434/api/llm-backends/1/toggle "
     '-H "Authorization: Bearer $MLX_BRIDGE_ADMIN_TOKEN"', "jq '.enabled'", "true\n"),
]


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None,
                    reason="jq and curl are needed to run the seed commands as written")
def test_the_seeds_mlx_server_scenario_as_written(srv):
    """Runs first: the seed's PUT names row 1."""
    b_port = srv.ollama.rsplit(":", 1)[1]
    mlx_arm = ("mlx", f"http://localhost:{srv.mlx_port}")
    ollama_arm = ("ollama", f"http://localhost:{b_port}")
    default_arm = ("ollama", srv.ollama)
    expected_counts = [{mlx_arm: 1}, {mlx_arm: 1, ollama_arm: 1},
                       {mlx_arm: 1, ollama_arm: 1, default_arm: 1}]
    for curl, jq, expected in SEED_STEPS:
        command = (f"{curl} | {jq}".replace("localhost:11434", srv.bridge.removeprefix("http://"))
                   .replace("localhost:8080", f"localhost:{srv.mlx_port}")
                   .replace("localhost:11435", f"localhost:{b_port}"))
        expected = expected.replace("localhost:8080", f"localhost:{srv.mlx_port}")
        run = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                             text=True, timeout=60, env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN,
                                                         "PATH": "/usr/bin:/bin"})
        assert (run.returncode, run.stdout) == (0, expected), (command, run.stderr)
        if "api/generate" in curl:  # who answered: the request log, per backend and endpoint
            want = expected_counts.pop(0)
            assert wait_until(lambda w=want: counts(srv, SEED_MODEL) == w), counts(srv, SEED_MODEL)
    plan = requests.get(srv.bridge + f"/api/llm-backends/model/{SEED_MODEL}", timeout=10).json()
    assert plan["plan"]["targets"] == [{
        "backend": "ollama", "endpoint_url": f"http://localhost:{b_port}", "mlx_model": None,
        "timeout_seconds": None, "protocol": "ollama", "remote_model": None}]


def test_weighted_rows_split_the_traffic_and_the_comparison_shows_each_arm(srv):
    add_row(srv, model_name="split", backend_type="mlx", endpoint_url=srv.mlx,
            mlx_model=SEED_REPO, priority=5, weight=1)
    add_row(srv, model_name="split", backend_type="ollama", endpoint_url=srv.ollama,
            priority=5, weight=1)
    for _ in range(16):
        assert chat(srv.bridge, "split").status_code == 200
    assert wait_until(lambda: sum(counts(srv, "split").values()) == 16)
    split = arms(srv, "split")
    # both arms served (all 16 on one side: p = 2 / 2**16), none by fallback
    assert set(split) == {("mlx", srv.mlx), ("ollama", srv.ollama)}, split
    assert all(a["ok"] == a["requests"] and a["fallbacks"] == 0 for a in split.values())
    remote = split[("mlx", srv.mlx)]
    assert remote["avg_tokens_per_sec"] and remote["avg_ttft_ms"] is not None
    rows = requests.get(srv.bridge + "/api/llm-backends", headers=AUTH, timeout=10).json()
    per_row = {(r["backend_type"], r["endpoint_url"]): r["total_requests"] for r in rows
               if r["model_name"] == "split:latest"}
    assert per_row == {k: v["requests"] for k, v in split.items()}  # each row counts its arm


def test_embeddings_over_the_openai_protocol_match_the_engines_own(srv):
    """The second bridge spoken to as an OpenAI engine: /api/embed → its /v1/embeddings."""
    add_row(srv, model_name="emb", backend_type="ollama", endpoint_url=srv.ollama,
            protocol="openai")
    mine = requests.post(srv.bridge + "/api/embed", json={"model": "emb", "input": ["a", "b"]},
                         timeout=60)
    assert mine.status_code == 200, mine.text
    theirs = requests.post(srv.ollama + "/api/embed", json={"model": "emb", "input": ["a", "b"]},
                           timeout=60).json()
    body = mine.json()
    assert body["model"] == "emb" and len(body["embeddings"]) == 2
    for got, want in zip(body["embeddings"], theirs["embeddings"], strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert body["prompt_eval_count"] == theirs["prompt_eval_count"]
    legacy = requests.post(srv.bridge + "/api/embeddings", json={"model": "emb", "prompt": "a"},
                           timeout=60).json()
    assert legacy["embedding"] == pytest.approx(theirs["embeddings"][0], abs=1e-5)


def test_an_ollama_endpoint_gets_its_own_name_for_the_model(srv):
    add_row(srv, model_name="renamed", backend_type="ollama", endpoint_url=srv.ollama,
            remote_model="emb")
    mine = chat(srv.bridge, "renamed")
    assert mine.status_code == 200, mine.text
    assert mine.json()["message"] == chat(srv.ollama, "emb").json()["message"]
    listed = requests.get(srv.bridge + "/api/tags", timeout=10).json()["models"]
    entry = next(m for m in listed if m["name"] == "renamed:latest")
    assert (entry["size"], entry["remote_model"], entry["remote_host"]) == (0, "emb", srv.ollama)


def test_the_key_goes_to_the_openai_engine_and_is_never_shown(srv):
    """A row's api_key_env: its value is the Bearer token of the converted request and of the
    /health probe; the client's own Authorization stays at the bridge; no answer shows the key.
    (The recorder answers Ollama's JSON, not a completion: a 502 saying so.)"""
    row = add_row(srv, model_name="keyed", backend_type="mlx", endpoint_url=srv.recorder,
                  remote_model="remote-keyed", api_key_env="MLX_BRIDGE_KEY_REMOTE")
    recording_upstream.reset(srv.recorder)
    resp = requests.post(srv.bridge + "/api/chat", timeout=30,
                         headers={"Authorization": "Bearer client-secret"},
                         json={"model": "keyed", "messages": [{"role": "user", "content": "x"}],
                               "stream": False})
    assert resp.status_code == 502 and "no completion" in resp.json()["error"], resp.text
    (seen,) = recording_upstream.records(srv.recorder, "/v1/chat/completions")
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["authorization"] == f"Bearer {KEY}" and seen["model"] == "remote-keyed"
    health = requests.get(srv.bridge + "/health", timeout=10)
    (probe,) = recording_upstream.records(srv.recorder, "/v1/models")
    assert {k.lower(): v for k, v in probe["headers"].items()}["authorization"] == f"Bearer {KEY}"
    shown = [resp.text, health.text, json.dumps(row),
             requests.get(srv.bridge + "/api/llm-backends/model/keyed", timeout=10).text,
             requests.get(srv.bridge + "/api/tags", timeout=10).text]
    assert all(KEY not in text for text in shown)


def test_a_model_the_openai_engine_lacks_falls_back_and_is_recorded_once(srv):
    add_row(srv, model_name="lacks", backend_type="mlx", endpoint_url=srv.mlx,
            remote_model="nobody/absent-model", priority=10)
    add_row(srv, model_name="lacks", backend_type="ollama", endpoint_url=srv.ollama, priority=1)
    assert chat(srv.bridge, "lacks").status_code == 200
    assert wait_until(lambda: sum(counts(srv, "lacks").values()) == 2), counts(srv, "lacks")
    lacks = arms(srv, "lacks")
    assert (lacks[("mlx", srv.mlx)]["requests"], lacks[("mlx", srv.mlx)]["errors"]) == (1, 1)
    assert (lacks[("ollama", srv.ollama)]["ok"], lacks[("ollama", srv.ollama)]["fallbacks"]) == (
        1, 1)
    alone = requests.post(srv.bridge + "/api/llm-backends", headers=AUTH, timeout=10, json={
        "model_name": "lacks-alone", "backend_type": "mlx", "endpoint_url": srv.mlx,
        "remote_model": "nobody/absent-model"})
    assert alone.status_code == 201
    missing = chat(srv.bridge, "lacks-alone")
    assert missing.status_code == 404
    assert missing.json()["error"].startswith(
        f"model 'lacks-alone' not found at the OpenAI-protocol endpoint {srv.mlx}: ")


def test_a_remote_that_never_answers_hurts_no_one_else(srv):
    """An OpenAI endpoint that accepts connections and stays silent: its request ends at the row's
    timeout (504), while the bridge answers others and /health stays fast."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: connects succeed, nothing is ever answered
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        add_row(srv, model_name="hang", backend_type="mlx", endpoint_url=url, timeout_seconds=2)
        result: dict[str, object] = {}

        def hostile() -> None:
            started = time.monotonic()
            result["resp"] = chat(srv.bridge, "hang")
            result["took"] = time.monotonic() - started

        thread = threading.Thread(target=hostile)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert requests.get(srv.bridge + "/api/version", timeout=10).status_code == 200
        assert chat(srv.bridge, "split").status_code == 200
        health = requests.get(srv.bridge + "/health", timeout=10).json()["backends"]["remote"]
        assert time.monotonic() - started < 3
        assert next(e for e in health if e["endpoint_url"] == url)["reachable"] is False
        thread.join(30)
        resp = result["resp"]
        assert isinstance(resp, requests.Response) and resp.status_code == 504
        assert "timed out" in resp.json()["error"] and result["took"] < 10
    finally:
        silent.close()


def test_failover_when_the_mlx_server_dies(srv):
    """Runs last: stops the mlx_lm.server."""
    add_row(srv, model_name="ab", backend_type="mlx", endpoint_url=srv.mlx,
            mlx_model=SEED_REPO, priority=10)
    add_row(srv, model_name="ab", backend_type="ollama", endpoint_url=srv.ollama, priority=5)
    direct = requests.post(srv.mlx + "/v1/chat/completions", timeout=60, json={
        "model": SEED_REPO, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
        "temperature": 0}).json()["choices"][0]["message"]["content"]
    assert chat(srv.bridge, "ab").json()["message"]["content"] == direct
    stop_server(srv.mlx_proc)
    from_b = chat(srv.ollama, "ab").json()["message"]["content"]
    assert from_b != direct
    failed_over = chat(srv.bridge, "ab")
    assert failed_over.status_code == 200 and failed_over.json()["message"]["content"] == from_b
    health = requests.get(srv.bridge + "/health", timeout=10).json()["backends"]["remote"]
    mlx = next(e for e in health if e["endpoint_url"] == srv.mlx)
    assert (mlx["reachable"], mlx["protocol"], mlx["breaker"]["state"]) == (False, "openai", "open")
    assert mlx["error"] == "connection refused"
    # the breaker puts the dead endpoint last: the next request goes straight to the Ollama side
    assert chat(srv.bridge, "ab").json()["message"]["content"] == from_b
    assert wait_until(lambda: sum(counts(srv, "ab").values()) == 4)
    ab = arms(srv, "ab")
    assert (ab[("mlx", srv.mlx)]["ok"], ab[("mlx", srv.mlx)]["errors"]) == (1, 1)
    assert (ab[("ollama", srv.ollama)]["ok"], ab[("ollama", srv.ollama)]["fallbacks"]) == (2, 1)


# ---- configuration: rows and the mapping file, without servers ---------------------------------

def test_rows_validate_the_remote_fields():
    from bridge.api.admin_fields import check_row
    from bridge.errors import Unprocessable

    ok = check_row({"protocol": "openai", "remote_model": " org/m ", "weight": 2}, creating=False)
    assert ok == {"protocol": "openai", "remote_model": "org/m", "weight": 2.0}
    assert check_row({"protocol": None, "weight": None}, creating=False) == {
        "protocol": None, "weight": None}
    for bad, why in (({"protocol": "grpc"}, "protocol: must be one of ollama, openai"),
                     ({"weight": 0}, "weight: must be greater than 0"),
                     ({"weight": "1"}, "weight: must be a number"),
                     ({"remote_model": ""}, "remote_model: must be a non-empty string")):
        with pytest.raises(Unprocessable) as err:
            check_row(bad, creating=False)
        assert why in err.value.message


def test_the_store_upgrades_an_older_file_with_the_new_columns(tmp_path):
    import sqlite3

    from bridge.stats.store import Store

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the backends table as an older release made it
        conn.execute("CREATE TABLE backends (id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT "
                     "NOT NULL, model_key TEXT NOT NULL, backend_type TEXT NOT NULL, endpoint_url "
                     "TEXT, mlx_model TEXT, enabled INTEGER NOT NULL DEFAULT 1, priority INTEGER "
                     "NOT NULL DEFAULT 0, max_tokens INTEGER, temperature_default REAL, "
                     "timeout_seconds REAL, description TEXT NOT NULL DEFAULT '', created_at TEXT "
                     "NOT NULL, updated_at TEXT NOT NULL)")
    store = Store(path)
    row = store.create({"model_name": "m", "backend_type": "mlx", "endpoint_url": "http://h:8080",
                        "protocol": "openai", "remote_model": "org/m", "weight": 0.5})
    assert (row.protocol, row.remote_model, row.weight, row.api_key_env) == (
        "openai", "org/m", 0.5, None)
    store.close()


def test_mapping_entries_name_remote_engines(tmp_path):
    from bridge.routing.registry import MappingError, parse_mappings
    from bridge.routing.router import Router

    _, entries = parse_mappings({"models": {
        "seed": {"backend": "mlx", "endpoint_url": "http://localhost:8080/",
                 "mlx": "org/model"},
        "vllm": {"backend": "ollama", "protocol": "openai", "endpoint_url": "https://gpu:8000",
                 "remote_model": "meta/llama", "api_key_env": "MLX_BRIDGE_KEY_GPU"},
    }}, "mappings", tmp_path)
    registry = type("R", (), {"lookup": lambda self, name: entries.get(f"{name}:latest")})()
    router = Router(registry, lambda: "http://127.0.0.1:11435")  # type: ignore[arg-type]
    (seed,) = router.plan("seed").targets
    assert (seed.backend, seed.endpoint, seed.protocol, seed.remote_model) == (
        "mlx", "http://localhost:8080", "openai", "org/model")  # as mlx_lm.server --model
    (vllm,) = router.plan("vllm").targets
    assert (vllm.protocol, vllm.remote_model, vllm.api_key_env) == (
        "openai", "meta/llama", "MLX_BRIDGE_KEY_GPU")
    for spec, why in (({"endpoint_url": "ftp://h"}, "endpoint_url"),
                      ({"endpoint_url": "http://u:p@h"}, "endpoint_url"),
                      ({"endpoint_url": "http://h", "protocol": "grpc"}, "protocol"),
                      ({"endpoint_url": "http://h", "api_key_env": "HOME"}, "api_key_env"),
                      ({"backend": "mlx"}, "needs 'mlx:")):
        with pytest.raises(MappingError, match=why):
            parse_mappings({"models": {"m": spec}}, "mappings", tmp_path)


def test_weights_split_equal_priorities_and_keep_the_rest_in_order():
    import random
    from types import SimpleNamespace as Row

    from bridge.routing.router import Router

    router = Router(None, lambda: None, rng=random.Random(1))  # type: ignore[arg-type]
    rows = [Row(id=1, priority=9, weight=None), Row(id=2, priority=5, weight=3.0),
            Row(id=3, priority=5, weight=1.0), Row(id=4, priority=1, weight=None)]
    firsts = [router.weighted(rows)[1].id for _ in range(4000)]
    assert 0.70 < firsts.count(2) / len(firsts) < 0.80  # 3 : 1
    assert all(router.weighted(rows)[0].id == 1 and router.weighted(rows)[3].id == 4
               for _ in range(50))
    plain = [Row(id=1, priority=5, weight=None), Row(id=2, priority=5, weight=None)]
    assert [r.id for r in router.weighted(plain)] == [1, 2]  # no weight: id order, as before
