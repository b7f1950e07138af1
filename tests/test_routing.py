"""Routing with two real server processes: the bridge and an upstream speaking Ollama's protocol.

The upstream is another bridge instance serving its own tiny models (no mock objects).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import ollama
import pytest
import requests

from bridge.testing import build_tiny_model

from .conftest import free_port, start_server, stop_server, write_mappings

GREEDY = {"temperature": 0, "num_predict": 12}
TOKEN = "routing-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    models = {name: {"mlx": str(build_tiny_model(root / name, seed=seed)), "backend": "mlx"}
              for name, seed in (("up-only", 7), ("broken", 8), ("tiny-up", 9),
                                 ("absent-auto:1b", 10), ("shared", 11))}
    mappings = write_mappings(root / "map.yaml", models)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, tiny_model_dir, upstream):
    root = tmp_path_factory.mktemp("bridge")
    broken = root / "broken-weights"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    mappings = write_mappings(root / "map.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "broken": {"mlx": str(broken), "backend": "auto"},
        "broken-mlx": {"mlx": str(broken), "backend": "mlx"},
        "tiny-up": {"mlx": str(tiny_model_dir), "backend": "ollama"},
        "absent-auto:1b": {"mlx": "mlx-community/Not-Here-4bit", "backend": "auto"},
        "shared": {"mlx": str(tiny_model_dir), "backend": "mlx"},
    }, upstream=upstream)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home")],
                             env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN})
    yield url
    stop_server(proc)


def generate(url: str, model: str, stream: bool = False, **extra) -> requests.Response:
    body = {"model": model, "prompt": "hello", "stream": stream, "options": GREEDY, **extra}
    return requests.post(url + "/api/generate", json=body, stream=stream, timeout=60)


def test_forwarded_stream_arrives_in_chunks_and_equals_upstream(bridge, upstream):
    direct = generate(upstream, "up-only").json()
    with generate(bridge, "up-only", stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert len(lines) > 3
    assert "".join(line["response"] for line in lines) == direct["response"]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == direct["eval_count"]
    via = generate(bridge, "up-only").json()
    assert via["response"] == direct["response"]


def test_auto_with_broken_mlx_mapping_answers_from_upstream(bridge, upstream):
    direct = generate(upstream, "broken").json()
    via = generate(bridge, "broken")
    assert via.status_code == 200, via.text
    assert via.json()["response"] == direct["response"]
    health = requests.get(bridge + "/health", timeout=10).json()
    assert health["backends"]["ollama"]["reachable"] is True


def test_auto_with_absent_weights_answers_from_upstream(bridge, upstream):
    assert (generate(bridge, "absent-auto:1b").json()["response"]
            == generate(upstream, "absent-auto:1b").json()["response"])


def test_mlx_policy_never_falls_back(bridge):
    resp = generate(bridge, "broken-mlx")
    assert resp.status_code == 500 and "failed to load model" in resp.json()["error"]


def test_ollama_policy_uses_upstream_even_with_mlx_weights(bridge, upstream, tiny_model_dir):
    local = generate(bridge, "tiny").json()["response"]
    direct = generate(upstream, "tiny-up").json()["response"]
    via = generate(bridge, "tiny-up").json()["response"]
    assert via == direct and via != local


def test_chat_and_show_are_forwarded(bridge, upstream):
    client = ollama.Client(host=bridge)
    messages = [{"role": "user", "content": "hi"}]
    parts = list(client.chat(model="up-only", messages=messages, stream=True, options=GREEDY))
    direct = ollama.Client(host=upstream).chat(model="up-only", messages=messages, options=GREEDY)
    assert "".join(p.message.content for p in parts) == direct.message.content
    assert client.show("up-only").modelinfo["general.architecture"] == "llama"


def test_tags_and_ps_merge_local_and_upstream(bridge):
    requests.post(bridge + "/api/generate", json={"model": "up-only", "prompt": ""}, timeout=30)
    requests.post(bridge + "/api/generate", json={"model": "tiny", "prompt": ""}, timeout=30)
    names = [m["name"] for m in requests.get(bridge + "/api/tags", timeout=10).json()["models"]]
    assert "tiny:latest" in names and "up-only:latest" in names
    assert len(names) == len(set(names)), "a name served by MLX appears once"
    assert names.count("broken:latest") == 1
    ps = [m["name"] for m in requests.get(bridge + "/api/ps", timeout=10).json()["models"]]
    assert "tiny:latest" in ps and "up-only:latest" in ps


def test_status_of_upstream_errors_is_preserved(bridge):
    resp = generate(bridge, "nobody-has-this")
    assert resp.status_code == 404 and resp.json()["error"] == "model 'nobody-has-this' not found"
    too_long = {"model": "up-only", "input": "x " * 40, "truncate": False,
                "options": {"num_ctx": 4}}
    embed = requests.post(bridge + "/api/embed", json=too_long, timeout=10)  # the upstream's 400
    assert embed.status_code == 400 and embed.json() == {
        "error": "the input length exceeds the context length"}


def test_killing_upstream_mid_stream_ends_with_error_line(tmp_path, tiny_model_dir):
    up_map = write_mappings(tmp_path / "up.yaml", {"slow": {"mlx": str(tiny_model_dir)}})
    up_proc, up_url = start_server(["--mappings", str(up_map), "--home", str(tmp_path / "uh"),
                                    "--upstream", "none"])
    br_map = write_mappings(tmp_path / "br.yaml", {"tiny": {"mlx": str(tiny_model_dir)}},
                            upstream=up_url)
    br_proc, br_url = start_server(["--mappings", str(br_map), "--home", str(tmp_path / "bh")])
    try:
        body = {"model": "slow", "prompt": "go", "options": {"temperature": 0, "num_predict": 1900}}
        lines = []
        with requests.post(br_url + "/api/generate", json=body, stream=True, timeout=60) as resp:
            for raw in resp.iter_lines():
                lines.append(json.loads(raw))
                if len(lines) == 5:
                    os.killpg(up_proc.pid, signal.SIGKILL)
        assert len(lines) >= 5 and "error" in lines[-1] and not lines[-1].get("done")
        assert all("error" not in line for line in lines[:-1])
        ok = generate(br_url, "tiny")
        assert ok.status_code == 200 and ok.json()["done"]
        started = time.time()
        down = generate(br_url, "slow")
        # nothing listens there now (connection refused): an unknown name here, Ollama's 404
        assert (down.status_code == 404
                and "is not running (connection refused)" in down.json()["error"])
        assert time.time() - started < 10, "upstream down must not hang"
        tags = requests.get(br_url + "/api/tags", timeout=10).json()["models"]
        assert [m["name"] for m in tags] == ["tiny:latest"]
    finally:
        stop_server(up_proc)
        stop_server(br_proc)


def test_upstream_that_accepts_but_never_answers_times_out(tmp_path, tiny_model_dir):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", free_port()))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    br_map = write_mappings(tmp_path / "br.yaml", {"tiny": {"mlx": str(tiny_model_dir)}},
                            upstream=url)
    proc, br_url = start_server(["--mappings", str(br_map), "--home", str(tmp_path / "h")])
    try:
        started = time.time()
        tags = requests.get(br_url + "/api/tags", timeout=30)
        assert (tags.status_code == 200
                and [m["name"] for m in tags.json()["models"]] == ["tiny:latest"])
        assert time.time() - started < 10
    finally:
        stop_server(proc)
        silent.close()


def test_concurrent_forwarded_and_local_requests(bridge):
    results: dict[str, int] = {}

    def hit(model: str, i: int) -> None:
        results[f"{model}{i}"] = generate(bridge, model).status_code

    threads = [threading.Thread(target=hit, args=(m, i))
               for i in range(3) for m in ("tiny", "up-only")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results.values()) == {200} and len(results) == 6


def test_admin_api_moves_a_model_between_backends_without_restart(bridge, upstream):
    local = generate(bridge, "shared").json()["response"]
    remote = generate(upstream, "shared").json()["response"]
    assert local != remote
    row = requests.post(bridge + "/api/llm-backends", headers=AUTH, timeout=10, json={
        "model_name": "shared", "backend_type": "ollama", "endpoint_url": upstream}).json()
    try:
        assert generate(bridge, "shared").json()["response"] == remote
        requests.post(f"{bridge}/api/llm-backends/{row['id']}/toggle", headers=AUTH, timeout=10)
        assert generate(bridge, "shared").json()["response"] == local  # disabled: mapping again
        requests.post(f"{bridge}/api/llm-backends/{row['id']}/toggle", headers=AUTH, timeout=10)
        # an mlx row with an endpoint_url is MLX on that server (issue 15): none is the local one
        requests.put(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10,
                     json={"backend_type": "mlx", "endpoint_url": None})
        assert generate(bridge, "shared").json()["response"] == local
    finally:
        requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)
    assert generate(bridge, "shared").json()["response"] == local
    stats = requests.get(f"{bridge}/api/performance/comparison", headers=AUTH, timeout=10)
    assert stats.status_code == 200


def test_row_defaults_apply_when_the_request_sets_none(bridge, upstream):
    row = requests.post(bridge + "/api/llm-backends", headers=AUTH, timeout=10, json={
        "model_name": "shared", "backend_type": "ollama", "endpoint_url": upstream,
        "max_tokens": 3}).json()
    try:
        body = {"model": "shared", "prompt": "hi", "stream": False, "options": {"temperature": 0}}
        out = requests.post(bridge + "/api/generate", json=body, timeout=30).json()
        assert out["eval_count"] == 3
        body["options"]["num_predict"] = 5
        assert requests.post(bridge + "/api/generate", json=body,
                             timeout=30).json()["eval_count"] == 5
    finally:
        requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)


def test_endpoint_failover_by_priority_with_circuit_breaker(bridge, upstream):
    dead = f"http://127.0.0.1:{free_port()}"
    rows = [requests.post(bridge + "/api/llm-backends", headers=AUTH, timeout=10, json={
        "model_name": "up-only", "backend_type": "ollama", "endpoint_url": url,
        "priority": prio}).json()
        for url, prio in ((dead, 10), (upstream, 5))]
    try:
        direct = generate(upstream, "up-only").json()["response"]
        assert generate(bridge, "up-only").json()["response"] == direct
        endpoints = requests.get(bridge + "/health",
                                 timeout=10).json()["backends"]["ollama"]["endpoints"]
        assert endpoints[dead]["state"] == "open" and endpoints[upstream]["state"] == "closed"
        assert generate(bridge, "up-only").json()["response"] == direct  # dead one skipped now
    finally:
        for row in rows:
            requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)


def test_admin_writes_need_the_token(bridge):
    resp = requests.post(bridge + "/api/llm-backends",
                         json={"model_name": "x", "backend_type": "mlx"}, timeout=10)
    assert resp.status_code == 401
    lookup = requests.get(bridge + "/api/llm-backends/model/shared", timeout=10)
    assert lookup.status_code == 200


def test_pull_of_an_upstream_model_is_forwarded(bridge, upstream):
    with requests.post(bridge + "/api/pull", json={"model": "up-only"}, stream=True,
                       timeout=30) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert resp.status_code == 200 and lines[-1] == {"status": "success"}
    missing = requests.post(bridge + "/api/pull", json={"name": "nobody-has-this", "stream": False},
                            timeout=30)
    assert missing.status_code == 404  # in Ollama's words (the upstream bridge has no upstream)
    assert missing.json()["error"] == "pull model manifest: file does not exist"
