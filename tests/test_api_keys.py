"""API keys on a real bridge process (MLX_BRIDGE_REQUIRE_KEYS=1): made and revoked through the
admin API, stored hashed, sent by the real ollama and openai clients; per-key limits answered
429 with Retry-After, and held within 5% under a soak of several keys at once; usage per key in
the comparison and in /metrics."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import ollama
import openai
import pytest
import requests

from bridge.app import create_app
from bridge.config import load_config

from .helpers import start_server, stop_server, wait_until, write_mappings

TOKEN = "keys-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[tuple[str, Path]]:
    """(url, state dir) of one bridge that requires keys."""
    root = tmp_path_factory.mktemp("keys")
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"],
                             env={"MLX_BRIDGE_REQUIRE_KEYS": "1", "MLX_BRIDGE_ADMIN_TOKEN": TOKEN,
                                  "MLX_BRIDGE_ID": "keys-bridge"})
    try:
        yield url, root / "home"
    finally:
        stop_server(proc)


def make_key(url: str, name: str, **limits: int) -> str:
    r = requests.post(url + "/api/keys", json={"name": name, **limits}, headers=ADMIN, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_made_listed_and_stored_only_as_a_hash(server):
    url, home = server
    assert requests.post(url + "/api/keys", json={"name": "x"}, timeout=10).status_code == 401
    r = requests.post(url + "/api/keys", json={"name": "listed", "requests_per_minute": 5},
                      headers=ADMIN, timeout=10)
    assert r.status_code == 201 and r.headers["Location"] == f"/api/keys/{r.json()['id']}"
    secret = r.json()["key"]
    assert secret.startswith("mlxb-") and len(secret) > 40
    listed = requests.get(url + "/api/keys", headers=ADMIN, timeout=10).json()
    [entry] = [k for k in listed if k["name"] == "listed"]
    assert entry["requests_per_minute"] == 5 and entry["prefix"] == secret[:12]
    assert "key" not in entry and "key_hash" not in entry
    stored = b"".join(p.read_bytes() for p in home.glob("bridge.db*"))
    assert secret.encode() not in stored
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored
    dup = requests.post(url + "/api/keys", json={"name": "listed"}, headers=ADMIN, timeout=10)
    assert dup.status_code == 409
    for bad in ({"name": ""}, {"name": "ok", "max_streams": 0},
                {"name": "ok", "tokens_per_minute": "9"}, {"name": "ok", "scope": "all"}):
        assert requests.post(url + "/api/keys", json=bad, headers=ADMIN,
                             timeout=10).status_code == 422, bad


def test_ollama_client_passes_with_a_key_and_gets_401_without(server):
    url, _ = server
    key = make_key(url, "ollama-user")
    client = ollama.Client(host=url, headers=bearer(key))
    assert client.generate(model="tiny", prompt="hi", options={"num_predict": 2})["done"]
    assert "tiny:latest" in [m.model for m in client.list().models]
    for headers in ({}, bearer("mlxb-not-a-key"), {"Authorization": f"Basic {key}"}):
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=url, headers=headers).generate(model="tiny", prompt="hi")
        assert err.value.status_code == 401
    for open_path in ("/api/version", "/health", "/api/health"):  # open paths
        assert requests.get(url + open_path, timeout=5).status_code == 200, open_path
    assert requests.get(url + "/api/models", timeout=5).status_code == 401  # the gateway's reads
    assert requests.get(url + "/api/tags", headers=ADMIN, timeout=5).status_code == 200


def test_openai_sdk_passes_with_a_key_and_gets_401_without(server):
    url, _ = server
    key = make_key(url, "openai-user")
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(model="tiny", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_anthropic_sdk_passes_with_a_key_in_x_api_key_and_gets_401_without(server):
    url, _ = server
    key = make_key(url, "anthropic-user")
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)  # sends x-api-key
    reply = client.messages.create(model="tiny", max_tokens=2,
                                   messages=[{"role": "user", "content": "hi"}])
    assert reply.stop_reason in ("max_tokens", "end_turn")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
            model="tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_over_the_request_limit_is_429_with_retry_after(server):
    url, _ = server
    key = make_key(url, "three-a-minute", requests_per_minute=3)
    for _ in range(3):
        assert requests.get(url + "/api/tags", headers=bearer(key), timeout=5).status_code == 200
    r = requests.get(url + "/api/tags", headers=bearer(key), timeout=5)
    assert r.status_code == 429 and "3 requests per minute" in r.json()["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    with pytest.raises(openai.RateLimitError) as err:
        openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0).models.list()
    assert 1 <= int(err.value.response.headers["Retry-After"]) <= 60
    with pytest.raises(ollama.ResponseError) as over:
        ollama.Client(host=url, headers=bearer(key)).list()
    assert over.value.status_code == 429
    other = make_key(url, "unaffected")  # one key's limit is not another's
    assert requests.get(url + "/api/tags", headers=bearer(other), timeout=5).status_code == 200
    # a limit raised through the admin API applies from the next request
    [entry] = [k for k in requests.get(url + "/api/keys", headers=ADMIN, timeout=5).json()
               if k["name"] == "three-a-minute"]
    raised = requests.put(f"{url}/api/keys/{entry['id']}", json={"requests_per_minute": None},
                          headers=ADMIN, timeout=5)
    assert raised.status_code == 200 and raised.json()["requests_per_minute"] is None
    assert requests.get(url + "/api/tags", headers=bearer(key), timeout=5).status_code == 200
    assert requests.put(f"{url}/api/keys/{entry['id']}", json={"name": "x"}, headers=ADMIN,
                        timeout=5).status_code == 422


def test_concurrent_streams_are_limited_per_key(server):
    url, _ = server
    key = make_key(url, "one-stream", max_streams=1)
    body = {"model": "tiny", "prompt": "The quick brown fox", "raw": True,  # greedy: no early end
            "options": {"temperature": 0, "num_predict": 5000, "num_ctx": 8192}}
    with requests.post(url + "/api/generate", json=body, headers=bearer(key), stream=True,
                       timeout=60) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped line iterator closes the connection
        next(lines)  # streaming now
        second = requests.get(url + "/api/tags", headers=bearer(key), timeout=5)
        assert second.status_code == 429 and second.headers["Retry-After"] == "1"
        started = time.monotonic()  # one client's streams do not hold up another request
        assert requests.get(url + "/api/version", timeout=5).status_code == 200
        assert time.monotonic() - started < 3
    assert wait_until(lambda: requests.get(url + "/api/tags", headers=bearer(key),
                                           timeout=5).status_code == 200, timeout=15)


def test_a_revoked_key_is_refused_from_the_next_request(server):
    url, _ = server
    key = make_key(url, "short-lived")
    assert requests.get(url + "/api/tags", headers=bearer(key), timeout=5).status_code == 200
    [entry] = [k for k in requests.get(url + "/api/keys", headers=ADMIN, timeout=5).json()
               if k["name"] == "short-lived"]
    assert requests.delete(f"{url}/api/keys/{entry['id']}", headers=ADMIN,
                           timeout=5).status_code == 204
    r = requests.get(url + "/api/tags", headers=bearer(key), timeout=5)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.delete(f"{url}/api/keys/99999", headers=ADMIN, timeout=5).status_code == 404


def test_usage_per_key_in_the_comparison_and_in_metrics(server):
    url, _ = server
    key = make_key(url, "metered")
    client = ollama.Client(host=url, headers=bearer(key))
    made = [client.generate(model="tiny", prompt="hi", options={"num_predict": 3})
            for _ in range(3)]
    tokens = sum(r["prompt_eval_count"] + r["eval_count"] for r in made)
    body = requests.get(url + "/api/performance/comparison", timeout=10).json()
    [usage] = [k for k in body["keys"] if k["api_key"] == "metered"]
    assert usage["requests"] == 3 and usage["prompt_tokens"] + usage["eval_tokens"] == tokens
    assert [b["bridge_id"] for b in body["bridges"]] == ["keys-bridge"]
    text = requests.get(url + "/metrics", timeout=10).text
    assert 'mlx_bridge_key_requests_total{key="metered",status="ok"} 3.0' in text
    evals = sum(r["eval_count"] for r in made)
    assert f'mlx_bridge_key_tokens_total{{key="metered",kind="eval"}} {float(evals)}' in text
    listed = requests.get(url + "/api/keys", headers=ADMIN, timeout=10).json()
    assert [k["usage"]["requests"] for k in listed if k["name"] == "metered"] == [3]


@pytest.mark.slow
def test_soak_several_keys_hold_their_limits_within_5_percent(server):
    url, _ = server
    rpm = {"soak-20": 20, "soak-40": 40, "soak-60": 60}
    keys = {name: make_key(url, name, requests_per_minute=n) for name, n in rpm.items()}
    tpm_key = make_key(url, "soak-tokens", tokens_per_minute=600)
    passed = dict.fromkeys(rpm, 0)
    refused = dict.fromkeys(rpm, 0)
    tokens: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + 6

    def hammer(name: str) -> None:
        while time.monotonic() < stop:
            r = requests.get(url + "/api/tags", headers=bearer(keys[name]), timeout=10)
            with lock:
                if r.status_code == 200:
                    passed[name] += 1
                else:
                    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
                    refused[name] += 1

    def generate() -> None:
        client = ollama.Client(host=url, headers=bearer(tpm_key))
        while time.monotonic() < stop:
            try:
                r = client.generate(model="tiny", prompt="hi", options={"num_predict": 8})
            except ollama.ResponseError as exc:
                assert exc.status_code == 429
                time.sleep(0.05)
                continue
            tokens.append(r["prompt_eval_count"] + r["eval_count"])

    threads = [threading.Thread(target=hammer, args=(n,)) for n in rpm for _ in range(3)]
    threads.append(threading.Thread(target=generate))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, limit in rpm.items():  # a sliding minute: exactly `limit` pass, the rest refused
        assert limit * 0.95 <= passed[name] <= limit, (name, passed, refused)
        assert refused[name] > 0
    # tokens are counted when a request ends: the request that crosses the limit still passes
    assert 600 <= sum(tokens) <= 600 * 1.05 + max(tokens), tokens
    assert sum(tokens) - tokens[-1] < 600


def test_a_server_others_can_reach_warns_when_keys_are_off(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="bridge.http.auth")
    create_app(load_config({"MLX_BRIDGE_HOST": "0.0.0.0:1", "MLX_BRIDGE_HOME": str(tmp_path)}))
    assert "non-loopback address without API keys" in caplog.text
    caplog.clear()
    create_app(load_config({"MLX_BRIDGE_HOST": "127.0.0.1:1", "MLX_BRIDGE_HOME": str(tmp_path)}))
    create_app(load_config({"MLX_BRIDGE_HOST": "0.0.0.0:1", "MLX_BRIDGE_HOME": str(tmp_path),
                            "MLX_BRIDGE_REQUIRE_KEYS": "1", "MLX_BRIDGE_ADMIN_TOKEN": "t"}))
    assert "without API keys" not in caplog.text
