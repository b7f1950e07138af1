"""What the bridge sends upstream, with a real server process in front of a recording upstream.

- invalid model names are refused (400) before any routing: nothing is forwarded or recorded;
- client credentials (Authorization, Cookie, ...) never reach an endpoint; a row's key comes
  from the environment variable it names; redirects are never followed;
- with no Ollama listening on the upstream port, unknown models answer 404 (not 502), which the
  real openai and ollama clients raise as "not found" without retrying; the upstream URL's
  `user:pass@` is never shown back.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import recording_upstream
from .conftest import free_port, start_server, stop_server, write_mappings
from .fuzz_bodies import (
    chat_body,
    embed_body,
    encoded,
    generate_body,
    name_body,
    openai_chat_body,
    openai_completion_body,
)

TOKEN = "forwarding-admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY = "sk-endpoint-key-from-env"
CHAT = [{"role": "user", "content": "hi"}]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[str, str]]:
    """(recorder, elsewhere): the recorder's /moved/... paths redirect to `elsewhere`."""
    other_proc, elsewhere = recording_upstream.start(free_port())
    proc, url = recording_upstream.start(free_port(), redirect_to=elsewhere)
    yield url, elsewhere
    stop(proc)
    stop(other_proc)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, tiny_model_dir, upstreams) -> Iterator[str]:
    root = tmp_path_factory.mktemp("forwarding")
    mappings = write_mappings(root / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir)}},
                              upstream=upstreams[0])
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home")],
                             env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN, "MLX_BRIDGE_KEY_REMOTE": KEY})
    yield url
    stop_server(proc)


def add_row(bridge: str, **fields) -> dict:
    resp = requests.post(bridge + "/api/llm-backends", headers=AUTH,
                         json={"backend_type": "ollama", **fields}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def chat(bridge: str, model: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(bridge + "/api/chat",
                         json={"model": model, "messages": CHAT, "stream": False},
                         headers=headers, timeout=30)


# --- invalid model names ---------------------------------------------------------------------

BAD_NAMES = ["x" * 8000, "tiny:../../x", "\u0000", "a b", "../../etc/passwd", "tiny\n"]
MODEL_ENDPOINTS = [
    ("POST", "/api/generate", lambda n: {"model": n, "prompt": "hi", "stream": False}),
    ("POST", "/api/chat", lambda n: {"model": n, "messages": CHAT, "stream": False}),
    ("POST", "/api/show", lambda n: {"model": n}),
    ("POST", "/api/embed", lambda n: {"model": n, "input": "hi"}),
    ("POST", "/api/embeddings", lambda n: {"model": n, "prompt": "hi"}),
    ("POST", "/api/pull", lambda n: {"model": n, "stream": False}),
    ("POST", "/api/push", lambda n: {"model": n, "stream": False}),
    ("POST", "/api/create", lambda n: {"model": n, "from": "tiny", "stream": False}),
    ("POST", "/api/copy", lambda n: {"source": n, "destination": "copy-of-it"}),
    ("POST", "/api/copy", lambda n: {"source": "remote-src", "destination": n}),
    ("DELETE", "/api/delete", lambda n: {"model": n}),
    ("POST", "/v1/chat/completions", lambda n: {"model": n, "messages": CHAT}),
    ("POST", "/v1/completions", lambda n: {"model": n, "prompt": "hi"}),
    ("POST", "/v1/embeddings", lambda n: {"model": n, "input": "hi"}),
]


def test_invalid_model_names_are_refused_and_never_forwarded_or_recorded(bridge, upstreams):
    recorder = upstreams[0]
    recording_upstream.reset(recorder)
    for method, path, body in MODEL_ENDPOINTS:
        for name in BAD_NAMES:
            resp = requests.request(method, bridge + path, json=body(name), timeout=30)
            assert resp.status_code == 400, (path, name[:20], resp.status_code, resp.text[:200])
            error = resp.json()["error"]
            if path.startswith("/v1/"):
                assert error["type"] == "invalid_request_error" and "invalid" in error["message"]
            else:
                assert isinstance(error, str) and "invalid" in error, (path, error[:200])
    forwarded = [r for r in recording_upstream.records(recorder)
                 if r["path"].startswith(("/api/", "/v1/"))
                 and r["path"] not in ("/api/version", "/api/tags", "/api/ps")]
    assert forwarded == [], [(r["path"], r["model"][:20]) for r in forwarded]
    # the recorder does see what is forwarded: a valid name nobody maps goes upstream
    assert chat(bridge, "remote-control").status_code == 200
    assert [r["model"] for r in recording_upstream.records(recorder, "/api/chat")] == [
        "remote-control"]
    logged = requests.get(bridge + "/api/performance/comparison", headers=AUTH,
                          timeout=30).json()["models"]
    assert "remote-control:latest" in [m["model"] for m in logged]
    assert all(len(m["model"]) < 100 and "\x00" not in m["model"] and ".." not in m["model"]
               for m in logged)


# --- secrets ----------------------------------------------------------------------------------

CLIENT_SECRETS = {"Authorization": "Bearer client-secret", "Cookie": "session=client-cookie",
                  "X-Api-Key": "client-api-key", "Proxy-Authorization": "Basic Y2xpZW50",
                  "X-Forwarded-For": "10.1.2.3", "User-Agent": "probe-agent/1.0"}


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def test_client_credentials_are_not_relayed(bridge, upstreams):
    recorder = upstreams[0]
    recording_upstream.reset(recorder)
    resp = chat(bridge, "remote-plain", CLIENT_SECRETS)
    assert resp.status_code == 200 and resp.json()["message"]["content"] == "ok"
    [seen] = recording_upstream.records(recorder, "/api/chat")
    text = str(seen["headers"])
    assert not any(secret in text for secret in ("client-secret", "client-cookie",
                                                  "client-api-key", "Y2xpZW50"))
    headers = lowered(seen["headers"])
    assert set(headers) <= {"host", "content-type", "accept", "user-agent", "x-request-id",
                            "accept-encoding", "content-length", "connection"}, sorted(headers)
    assert headers["user-agent"] == "probe-agent/1.0"
    assert headers["x-request-id"] == resp.headers["X-Request-ID"]
    assert "set-cookie" not in lowered(dict(resp.headers))  # nor the other way round


def test_an_endpoint_key_comes_from_the_environment_variable_its_row_names(bridge, upstreams):
    recorder = upstreams[0]
    keyed = add_row(bridge, model_name="remote-keyed", endpoint_url=recorder,
                    api_key_env="MLX_BRIDGE_KEY_REMOTE")
    unset = add_row(bridge, model_name="remote-unset", endpoint_url=recorder,
                    api_key_env="MLX_BRIDGE_KEY_NOT_SET")
    try:
        assert keyed["api_key_env"] == "MLX_BRIDGE_KEY_REMOTE" and KEY not in str(keyed)
        recording_upstream.reset(recorder)
        assert chat(bridge, "remote-keyed", CLIENT_SECRETS).status_code == 200
        [seen] = recording_upstream.records(recorder, "/api/chat")
        assert lowered(seen["headers"])["authorization"] == f"Bearer {KEY}"
        missing = chat(bridge, "remote-unset", CLIENT_SECRETS)
        assert missing.status_code == 502 and "$MLX_BRIDGE_KEY_NOT_SET" in missing.json()["error"]
        assert [r["model"] for r in recording_upstream.records(recorder, "/api/chat")] == [
            "remote-keyed"]
    finally:
        for row in (keyed, unset):
            requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)
    for name in ("HOME", "MLX_BRIDGE_ADMIN_TOKEN", "mlx_bridge_key_x", "MLX_BRIDGE_KEY_"):
        refused = requests.post(bridge + "/api/llm-backends", headers=AUTH, timeout=10, json={
            "model_name": "remote-x", "backend_type": "ollama", "api_key_env": name})
        assert (refused.status_code == 422
                and refused.json()["error"].startswith("api_key_env:")), name


def test_redirects_are_reported_never_followed(bridge, upstreams):
    recorder, elsewhere = upstreams
    row = add_row(bridge, model_name="remote-moved", endpoint_url=recorder + "/moved")
    try:
        recording_upstream.reset(recorder)
        recording_upstream.reset(elsewhere)
        resp = chat(bridge, "remote-moved")
        assert resp.status_code == 502, resp.text
        assert "redirect" in resp.json()["error"] and "not followed" in resp.json()["error"]
        assert [r["path"] for r in recording_upstream.records(recorder, "/moved/")] == [
            "/moved/api/chat"]
        assert recording_upstream.records(elsewhere) == []  # the request never went there
        assert requests.get(bridge + "/api/version", timeout=5).status_code == 200
    finally:
        requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)


def test_endpoint_urls_with_credentials_are_refused_without_echoing_them(bridge):
    url = "http://someone:pw-in-url@127.0.0.1:9"
    created = requests.post(bridge + "/api/llm-backends", headers=AUTH, timeout=10, json={
        "model_name": "remote-creds", "backend_type": "ollama", "endpoint_url": url})
    assert created.status_code == 422 and created.json()["error"].startswith("endpoint_url:")
    assert "pw-in-url" not in created.text
    row = add_row(bridge, model_name="remote-creds")
    try:
        updated = requests.put(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10,
                               json={"endpoint_url": url})
        assert updated.status_code == 422 and "pw-in-url" not in updated.text
    finally:
        requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)


# --- no Ollama on the upstream port -----------------------------------------------------------


@pytest.fixture(scope="module")
def down(tmp_path_factory, tiny_model_dir) -> Iterator[tuple[str, list[str]]]:
    """A bridge whose upstream (given with user:password@) has nothing listening.

    Yields (url, log lines)."""
    root = tmp_path_factory.mktemp("down")
    mappings = write_mappings(root / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    upstream = f"http://bridgeuser:hunter2-secret@127.0.0.1:{free_port()}"
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", upstream])
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(
        raw.decode(errors="replace") for raw in iter(proc.stdout.readline, b"")), daemon=True)
    reader.start()
    yield url, lines
    stop_server(proc)
    reader.join(10)


def test_unknown_models_are_404_for_ollama_python(down):
    url, _ = down
    client = ollama.Client(host=url)
    calls = {
        "chat": (lambda: client.chat(model="nope-x", messages=CHAT), "model 'nope-x' not found"),
        "generate": (lambda: client.generate(model="nope-x", prompt="hi"),
                     "model 'nope-x' not found"),
        "show": (lambda: client.show("nope-x"), "model 'nope-x:latest' not found"),
        "pull": (lambda: client.pull("nope-x"), "pull model manifest: file does not exist"),
        "embed": (lambda: client.embed(model="nope-x", input="hi"),
                  'model "nope-x" not found, try pulling it first'),
    }
    for what, (call, text) in calls.items():
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404, (what, err.value.status_code, err.value.error)
        assert err.value.error.startswith(text), (what, err.value.error)
        assert "is not running (connection refused)" in err.value.error
        assert "hunter2" not in err.value.error and "***@127.0.0.1" in err.value.error
    # MLX still serves
    assert client.generate(model="tiny", prompt="hi", options={"num_predict": 2}).done


def test_blobs_without_a_running_upstream_are_404_not_502(down):
    """`ollama create` asks HEAD /api/blobs first: with no Ollama running no blob exists (its
    404, as Ollama answers a missing blob), and a POST says why it cannot be stored."""
    url, _ = down
    blob = url + "/api/blobs/sha256:" + "0" * 64
    head = requests.head(blob, timeout=30)
    assert head.status_code == 404
    post = requests.post(blob, data=b"x" * 1000, timeout=30)
    assert post.status_code == 404
    error = post.json()["error"]
    assert error.startswith("cannot store blob sha256:") and "is not running" in error
    assert "hunter2" not in error


def test_unknown_models_are_not_found_for_the_openai_sdk_without_retries(down):
    url, _ = down
    sent: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda req: sent.append(req.url.path)]})
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=2, http_client=http)
    calls = [
        lambda: client.chat.completions.create(model="nope-x", messages=CHAT),
        lambda: client.chat.completions.create(model="nope-x", messages=CHAT, stream=True),
        lambda: client.completions.create(model="nope-x", prompt="hi"),
        lambda: client.embeddings.create(model="nope-x", input="hi"),
    ]
    for call in calls:
        sent.clear()
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert len(sent) == 1, sent  # a 404 is not retried (a 502 was, twice)
        assert err.value.body["type"] == "not_found_error"
        assert "nope-x" in err.value.body["message"] and "not running" in err.value.body["message"]
        assert "hunter2" not in err.value.body["message"]


def test_health_and_the_log_say_the_upstream_is_not_running_without_its_password(down):
    url, lines = down
    requests.post(url + "/api/chat", json={"model": "nope-y", "messages": CHAT}, timeout=30)
    health = requests.get(url + "/health", timeout=10)
    ollama_state = health.json()["backends"]["ollama"]
    assert ollama_state["reachable"] is False
    assert "is not running (connection refused)" in ollama_state["error"]
    assert ollama_state["upstream"].startswith("http://***@127.0.0.1:")
    lookup = requests.get(url + "/api/llm-backends/model/nope-y", timeout=10)
    # no row and no mapping: a 404 that names where its requests go, password hidden
    assert lookup.status_code == 404 and "http://***@127.0.0.1:" in lookup.json()["error"]
    for text in (health.text, lookup.text):
        assert "hunter2" not in text and "bridgeuser" not in text
    log = "".join(lines)
    assert "model=nope-y reason=upstream_not_running" in log
    assert "hunter2" not in log


def test_a_reachable_upstream_keeps_its_own_status(bridge):
    resp = chat(bridge, "nobody-has-this")  # the recorder answers Ollama's 404 itself
    assert resp.status_code == 404 and resp.json() == {"error": "model 'nobody-has-this' not found"}


# The fuzzer's bodies, sent to a bridge whose upstream is down; the issue's names among them.
ISSUE_NAMES = st.sampled_from(["x" * 8000, "tiny:../../x", "\u0000", "nope", "user/nope:7b"])
DOWN_CASES = st.one_of(
    st.tuples(st.just("/api/generate"), encoded(generate_body())),
    st.tuples(st.just("/api/chat"), encoded(chat_body())),
    st.tuples(st.just("/v1/chat/completions"), encoded(openai_chat_body())),
    st.tuples(st.just("/v1/completions"), encoded(openai_completion_body())),
    st.tuples(st.sampled_from(["/api/embed", "/api/embeddings", "/v1/embeddings"]),
              encoded(embed_body())),
    st.tuples(st.sampled_from(["/api/show", "/api/pull", "/api/copy", "/api/push"]),
              encoded(name_body())),
    st.tuples(st.sampled_from(["/api/generate", "/api/chat", "/v1/chat/completions", "/api/embed",
                               "/api/show", "/api/push"]),
              encoded(st.builds(lambda n: {"model": n, "source": n, "prompt": "hi",
                                           "messages": CHAT, "input": "hi"}, ISSUE_NAMES))),
)


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(case=DOWN_CASES)
def test_fuzzed_requests_never_answer_5xx_while_the_upstream_is_down(down, case):
    """Before: unknown and invalid names answered 502 (the upstream "not reachable")."""
    url, _ = down
    path, raw = case
    resp = requests.post(url + path, data=raw, headers={"Content-Type": "application/json"},
                         timeout=60)
    assert resp.status_code < 500, (path, raw[:120], resp.status_code, resp.text[:200])


def test_a_request_its_down_endpoint_could_not_take_is_counted_as_its_error(down):
    """The last target refusing connections: the client's 404 as before, and the endpoint's
    failure in the metrics and request log (a remote engine that was down looked healthy
    there: error rate 0)."""
    url, _ = down

    def errors() -> float:
        text = requests.get(url + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("mlx_bridge_requests_total{")
                   and 'model="gone-x:latest"' in line and 'status="error"' in line)

    before = errors()
    r = requests.post(url + "/api/chat", timeout=30, json={
        "model": "gone-x", "messages": CHAT, "stream": False})
    assert r.status_code == 404 and "is not running" in r.json()["error"]
    assert errors() == before + 1
