"""Property-based fuzzing of every endpoint: nothing a client sends may produce a 5xx.

Each case asserts the status is below 500 and, for errors, the shape: `{"error": "<text>"}` on the
native API, `{"error": {"message", "type", ...}}` on /v1 (Anthropic's `{"type": "error", "error":
{...}}` on /v1/messages), Go's plain-text 404/405 for unknown
routes. Successful streams must parse line by line and carry no error line. The volume runs on the
in-process app (upstream disabled, the tiny real MLX model); a smaller batch goes to a real server.

Cases are derandomized (the same every run, so CI is stable); FUZZ_SCALE=10 multiplies the case
counts and FUZZ_RANDOM=1 draws new cases, for longer campaigns by hand.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.app import create_app
from bridge.config import load_config

from .fuzz_bodies import (
    ADMIN_ROW,
    GARBAGE,
    MODELS,
    anthropic_body,
    chat_body,
    deep_body,
    embed_body,
    encoded,
    generate_body,
    name_body,
    openai_chat_body,
    openai_completion_body,
    responses_body,
)

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
ADMIN_TOKEN = "fuzz-secret"
# What every case counted; printed at the end (pytest -s) for the record.
COUNTS: dict[str, int] = {}
STATUSES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """Print how many cases each property ran, for the record (visible with -s)."""
    started = time.perf_counter()
    yield
    print(f"\nfuzz cases: {json.dumps(COUNTS, sort_keys=True)} total={sum(COUNTS.values())} "
          f"seconds={time.perf_counter() - started:.1f}")
    if os.environ.get("FUZZ_STATUSES"):
        print(json.dumps(STATUSES, sort_keys=True, indent=0))


def fuzz(examples: int):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                    suppress_health_check=list(HealthCheck))


def check(resp: Any, method: str, path: str, name: str) -> None:
    """The properties every answer must have; works for Flask and `requests` responses."""
    COUNTS[name] = COUNTS.get(name, 0) + 1
    status = resp.status_code
    STATUSES[f"{name}:{status}"] = STATUSES.get(f"{name}:{status}", 0) + 1
    body = resp.get_data() if hasattr(resp, "get_data") else resp.content
    mimetype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
    assert status < 500, (method, path, status, body[:500])
    if method == "HEAD" or status in (204, 304):
        return
    if status >= 400:
        check_error(path, status, mimetype, body)
    elif mimetype == "application/x-ndjson":
        lines = body.decode("utf-8").split("\n")
        assert lines[-1] == "", lines[-1:]
        for line in lines[:-1]:
            obj = json.loads(line)
            assert isinstance(obj, dict) and "error" not in obj, (path, line)
    elif mimetype == "text/event-stream":
        for event in body.decode("utf-8").split("\n\n")[:-1]:
            if event.startswith("event: "):  # Anthropic / Responses: named events
                name, data = event.split("\n", 1)
                assert data.startswith("data: ") and json.loads(data[6:])["type"] == name[7:], event
                assert name[7:] not in ("error", "response.failed"), event
                continue
            assert event.startswith("data: "), event
            if event != "data: [DONE]":
                assert "error" not in json.loads(event[6:]), event
    elif mimetype == "application/json":
        json.loads(body)


def check_error(path: str, status: int, mimetype: str, body: bytes) -> None:
    openai = path.startswith("/v1/")
    if mimetype == "text/plain" and not openai:
        assert (status in (404, 405)
                and body in (b"404 page not found", b"405 method not allowed")), body
        return
    assert mimetype == "application/json", (status, mimetype, body[:300])
    payload = json.loads(body)
    if path.startswith("/v1/messages"):  # Anthropic's shape
        assert isinstance(payload, dict) and payload.get("type") == "error", payload
        err = payload["error"]
        assert (isinstance(err.get("message"), str) and err["message"]
                and isinstance(err.get("type"), str)), payload
        return
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    if openai:
        err = payload["error"]
        assert (isinstance(err, dict) and isinstance(err.get("message"), str)
                and err["message"]), payload
        assert isinstance(err.get("type"), str) and err["type"], payload
    else:
        assert isinstance(payload["error"], str) and payload["error"].strip(), payload


def post(client: Any, path: str, raw: bytes, method: str = "POST", name: str = "") -> None:
    resp = client.open(path, method=method, data=raw, content_type="application/json")
    check(resp, method, path, name or path)


# --- structured, near-valid bodies per endpoint ----------------------------------------------
# /api/generate and /api/chat: 300 cases each, as /v1/chat/completions (500 cost CI 9 s more on
# a 2-core box: their valid bodies really generate); FUZZ_SCALE=10 for a campaign by hand.


@fuzz(300)
@given(raw=encoded(generate_body()))
def test_fuzz_generate(client, raw):
    post(client, "/api/generate", raw)


@fuzz(300)
@given(raw=encoded(chat_body()))
def test_fuzz_chat(client, raw):
    post(client, "/api/chat", raw)


@fuzz(300)
@given(raw=encoded(openai_chat_body()))
def test_fuzz_openai_chat(client, raw):
    post(client, "/v1/chat/completions", raw)


@fuzz(200)
@given(raw=encoded(openai_completion_body()))
def test_fuzz_openai_completions(client, raw):
    post(client, "/v1/completions", raw)


@fuzz(200)
@given(path=st.sampled_from(["/api/embed", "/api/embeddings", "/v1/embeddings"]),
       raw=encoded(embed_body()))
def test_fuzz_embeddings(client, path, raw):
    post(client, path, raw)


NAME_ENDPOINTS = [("POST", "/api/show"), ("DELETE", "/api/delete"), ("POST", "/api/pull"),
                  ("POST", "/api/copy"), ("POST", "/api/create"), ("POST", "/api/push")]


@fuzz(400)
@given(endpoint=st.sampled_from(NAME_ENDPOINTS), raw=encoded(name_body()))
def test_fuzz_model_name_endpoints(client, endpoint, raw):
    method, path = endpoint
    post(client, path, raw, method)


@fuzz(250)
@given(path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]),
       raw=encoded(anthropic_body()))
def test_fuzz_anthropic_messages(client, path, raw):
    post(client, path, raw)


@fuzz(250)
@given(raw=encoded(responses_body()))
def test_fuzz_responses(client, raw):
    post(client, "/v1/responses", raw)


@fuzz(150)
@given(case=deep_body())
def test_fuzz_deep_nesting(client, case):
    path, raw = case
    post(client, path, raw, name="deep")


# --- garbage, paths, queries, headers --------------------------------------------------------

BODY_ENDPOINTS = [("POST", "/api/generate"), ("POST", "/api/chat"),
                  ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                  ("POST", "/v1/embeddings"), ("POST", "/api/embed"), ("POST", "/api/embeddings"),
                  ("POST", "/api/llm-backends"), ("PUT", "/api/llm-backends/1"),
                  ("POST", "/api/blobs/sha256:" + "0" * 64), ("POST", "/v1/messages"),
                  ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/responses"), *NAME_ENDPOINTS]
CONTENT_TYPES = st.sampled_from([None, "application/json", "text/plain",
                                 "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x",
                                 "application/json; charset=latin-1", "\x00"])


@fuzz(500)
@given(endpoint=st.sampled_from(BODY_ENDPOINTS), raw=GARBAGE, content_type=CONTENT_TYPES)
def test_fuzz_garbage_bodies(client, endpoint, raw, content_type):
    method, path = endpoint
    kwargs = {"content_type": content_type} if content_type else {}
    check(client.open(path, method=method, data=raw, **kwargs), method, path, "garbage")


SEGMENT = st.one_of(MODELS, st.text(max_size=15), st.sampled_from(
    ["1", "0", "-1", "99999999999999999999", "%00", "..", "%2e%2e", "sha256:" + "a" * 64,
     "sha256-" + "F" * 64])
).map(lambda s: quote(s, safe="/%:@"))
PATH = st.one_of(
    st.builds("/v1/models/{}".format, SEGMENT), st.builds("/api/llm-backends/{}".format, SEGMENT),
    st.builds("/api/llm-backends/{}/toggle".format, SEGMENT),
    st.builds("/api/llm-backends/model/{}".format, SEGMENT),
    st.builds("/api/blobs/{}".format, SEGMENT), st.builds("/static/{}".format, SEGMENT),
    st.sampled_from(["/", "/api/version", "/api/tags", "/api/ps", "/health", "/metrics",
                     "/v1/models", "/api/llm-backends", "/api/performance/comparison", "/api/nope",
                     "/v1/nope", "//", "/api/",
                     "/api/generate", "/api/chat", "/api/show", "/api/delete"]))
QUERY = st.dictionaries(st.sampled_from(["model", "since", "enabled_only", "x"]),
                        st.one_of(st.text(max_size=12), st.sampled_from(
                            ["2025-01-31T00:00:00Z", "yes", "true", "maybe", "99999-01-01",
                             "2025-13-45"])),
                        max_size=3)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])


@fuzz(500)
@given(method=METHODS, path=PATH, query=QUERY, raw=st.one_of(st.just(b""), GARBAGE))
def test_fuzz_paths_and_queries(client, method, path, query, raw):
    resp = client.open(path, method=method, query_string=query, data=raw)
    check(resp, method, path, "paths")


HEADERS = st.dictionaries(
    st.sampled_from(["Host", "Origin", "Authorization", "X-Request-ID", "Content-Type",
                     "Access-Control-Request-Method", "Access-Control-Request-Headers",
                     "Accept", "Transfer-Encoding", "Content-Encoding"]),
    st.one_of(st.sampled_from(["localhost", "evil.example", "127.0.0.1:1", "[::1]", "x.local",
                               "http://localhost:3000", "https://evil.example", "null",
                               "Bearer " + ADMIN_TOKEN, "Bearer undefined", "POST", "gzip",
                               "chunked", "application/json"]),
              st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)),
    max_size=4)


@fuzz(400)
@given(method=METHODS, path=PATH, headers=HEADERS,
       raw=st.one_of(st.just(b""), encoded(generate_body())))
def test_fuzz_headers(client, method, path, headers, raw):
    resp = client.open(path, method=method, headers=headers, data=raw)
    check(resp, method, path, "headers")


# --- the admin API with a token (its writes are otherwise refused before validation) ----------


@pytest.fixture(scope="module")
def admin_client(tmp_path_factory, mappings_file):
    config = load_config({}, mappings_path=mappings_file,
                         home=tmp_path_factory.mktemp("fuzz-admin"), upstream="none",
                         admin_token=ADMIN_TOKEN)
    app = create_app(config)  # the engine is never started: admin calls do not use it
    yield app.test_client()
    app.extensions["bridge"].stop()


@fuzz(400)
@given(endpoint=st.sampled_from([("POST", "/api/llm-backends"), ("PUT", "/api/llm-backends/1"),
                                 ("PUT", "/api/llm-backends/2"),
                                 ("POST", "/api/llm-backends/1/toggle"),
                                 ("DELETE", "/api/llm-backends/2"),
                                 ("GET", "/api/llm-backends/model/tiny"),
                                 ("POST", "/api/keys"), ("GET", "/api/keys"),
                                 ("GET", "/api/keys/1"), ("PUT", "/api/keys/1"),
                                 ("DELETE", "/api/keys/2")]),
       raw=st.one_of(encoded(ADMIN_ROW), encoded(ADMIN_ROW), GARBAGE), query=QUERY)
def test_fuzz_admin_api(admin_client, endpoint, raw, query):
    method, path = endpoint
    resp = admin_client.open(path, method=method, data=raw, query_string=query,
                             content_type="application/json",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    check(resp, method, path, "admin")


# --- a real server process -------------------------------------------------------------------

REAL = st.one_of(
    st.tuples(st.just("/api/generate"), encoded(generate_body())),
    st.tuples(st.just("/api/chat"), encoded(chat_body())),
    st.tuples(st.just("/v1/chat/completions"), encoded(openai_chat_body())),
    st.tuples(st.just("/v1/completions"), encoded(openai_completion_body())),
    st.tuples(st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]),
              encoded(anthropic_body())),
    st.tuples(st.just("/v1/responses"), encoded(responses_body())),
    st.tuples(st.sampled_from(["/api/show", "/api/pull", "/api/copy"]), encoded(name_body())),
    st.tuples(st.sampled_from([p for m, p in BODY_ENDPOINTS if m == "POST"]), GARBAGE),
)


@fuzz(250)
@given(case=REAL)
def test_fuzz_real_server(server, case):
    path, raw = case
    resp = requests.post(server + path, data=raw, headers={"Content-Type": "application/json"},
                         timeout=60)
    check(resp, "POST", path, "real-server")


def test_real_server_still_serves_after_fuzzing(server):
    resp = requests.post(server + "/api/generate",
                         json={"model": "tiny", "prompt": "hi", "stream": False,
                               "options": {"num_predict": 3}}, timeout=60)
    assert resp.status_code == 200 and resp.json()["done"] is True


# --- coverage --------------------------------------------------------------------------------

FUZZED_RULES = {"/", "/api/version", "/api/tags", "/api/ps", "/health", "/metrics", "/v1/models",
                "/v1/models/<path:name>", "/static/<path:filename>", "/api/show", "/api/delete",
                "/api/pull", "/api/copy", "/api/create", "/api/push", "/api/generate", "/api/chat",
                "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/embed",
                "/api/embeddings", "/api/blobs/<digest>", "/api/llm-backends",
                "/api/llm-backends/<row_id>", "/api/llm-backends/<row_id>/toggle",
                "/api/llm-backends/model/<path:model_name>", "/api/performance/comparison",
                "/v1/messages", "/v1/messages/count_tokens", "/v1/responses",
                "/api/keys", "/api/keys/<key_id>",
                # fuzzed in tests/test_fuzz_gateway.py
                "/api/models", "/api/models/<path:name>", "/api/mlx/models",
                "/api/mlx/load/<path:name>", "/api/health",
                # fuzzed in tests/test_fuzz_ui.py
                "/ui", "/ui/", "/ui/<path:asset>", "/api/ui/models", "/api/ui/live"}


def test_every_route_is_fuzzed(app):
    """A new endpoint must be added to the fuzzer (and this list) before it ships."""
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert rules <= FUZZED_RULES, sorted(rules - FUZZED_RULES)


