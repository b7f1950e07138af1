"""Host-header check (DNS rebinding) and CORS, in-process and against a real server
(spec §0, §7)."""

from __future__ import annotations

import socket

import pytest
import requests

from bridge.app import create_app
from bridge.config import load_config
from bridge.http.security import ALLOWED_HEADERS

from .test_bad_input import raw_request

LOCAL_HOSTS = ["localhost", "localhost:11434", "LOCALHOST:1", socket.gethostname(), "foo.localhost",
               "mac.local:11434", "svc.internal", "127.0.0.1", "127.0.0.1:8080", "127.9.9.9",
               "[::1]:11434", "::1", "[::1]", "10.1.2.3", "192.168.0.10:11434", "172.16.0.1",
               "0.0.0.0:11434", "[fd00::1]:80", "169.254.1.1", "[::ffff:127.0.0.1]:1"]
FOREIGN_HOSTS = ["evil.example", "evil.example:11434", "8.8.8.8", "8.8.8.8:11434",
                 "localhost.evil.example", "127.0.0.1.nip.io", "[2001:4860::8888]:80",
                 "evil.localhost.com", "local", "internal", "localhost:11434:1",
                 "example.com\x00.localhost"]
BUILTIN_ORIGINS = ["http://localhost", "https://localhost", "http://localhost:3000",
                   "https://127.0.0.1:8443", "http://127.0.0.1", "http://0.0.0.0:8080",
                   "app://obsidian.md", "file://", "tauri://localhost", "vscode-webview://1abc",
                   "vscode-file://vscode-app"]
FOREIGN_ORIGINS = ["https://evil.example", "http://localhost.evil.example",
                   "http://127.0.0.1.evil.example", "null", "chrome-extension://abcdef",
                   "moz-extension://x", "http://localhostx:1", "http://10.0.0.5:3000"]
ACAO = "Access-Control-Allow-Origin"


def make_client(tmp_path, mappings_file, **overrides):
    """An app that is never started: these endpoints do not need the engine."""
    env = overrides.pop("env", {})
    config = load_config(env, mappings_path=mappings_file, home=tmp_path / "home", upstream="none",
                         **overrides)
    return create_app(config).test_client()


def error_text(resp, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.get_data()[:300])
    body = resp.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# --- Host header -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOCAL_HOSTS)
def test_local_host_names_are_served(client, host):
    resp = client.get("/api/version", headers={"Host": host})
    assert resp.status_code == 200, (host, resp.get_data()[:200])


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize("path",
                         ["/api/version", "/api/tags", "/api/chat", "/v1/models", "/api/nope"])
def test_foreign_host_is_forbidden_on_loopback(client, host, path):
    method = "POST" if path == "/api/chat" else "GET"
    resp = client.open(path, method=method, headers={"Host": host},
                       json={"model": "tiny", "messages": []})
    if path.startswith("/v1/"):
        assert resp.status_code == 403 and resp.get_json()["error"]["type"] == "permission_error"
    else:
        assert "not allowed" in error_text(resp, 403)
    assert ACAO not in resp.headers


def test_foreign_host_never_reaches_the_engine(client, app):
    """A rebinding page must not be able to load or run a model."""
    before = len(app.extensions["bridge"].local.engine.snapshot())
    resp = client.post("/api/generate", headers={"Host": "evil.example:11434"},
                       json={"model": "tiny-base", "prompt": "hi", "keep_alive": -1})
    assert resp.status_code == 403
    assert len(app.extensions["bridge"].local.engine.snapshot()) <= before


def test_host_check_is_off_when_bound_to_all_interfaces(tmp_path, mappings_file):
    c = make_client(tmp_path, mappings_file, host="0.0.0.0:11434")
    assert c.get("/api/version", headers={"Host": "evil.example"}).status_code == 200
    c = make_client(tmp_path, mappings_file, host="192.168.1.20:11434")
    assert c.get("/api/version", headers={"Host": "my-box.example.com:11434"}).status_code == 200


@pytest.mark.parametrize("bind", ["localhost:1", "[::1]:1", "127.0.0.2:1"])
def test_host_check_is_on_for_every_loopback_bind(tmp_path, mappings_file, bind):
    c = make_client(tmp_path, mappings_file, host=bind)
    assert c.get("/api/version", headers={"Host": "evil.example"}).status_code == 403
    assert c.get("/api/version", headers={"Host": "localhost"}).status_code == 200


def test_real_server_host_check(server):
    """Over a real socket: HTTP/1.0 with no Host is served, a foreign Host is refused."""
    no_host = raw_request(server, b"GET /api/version HTTP/1.0\r\n\r\n")
    assert no_host.split(b" ", 2)[1] == b"200", no_host[:200]
    evil = raw_request(server,
                       b"GET /api/version HTTP/1.1\r\nHost: evil.example:11434\r\nConnection: "
                       b"close\r\n\r\n")
    head, _, body = evil.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"403" and b'"error"' in body
    assert requests.get(server + "/api/version", headers={"Host": "localhost"},
                        timeout=10).status_code == 200


# --- CORS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", BUILTIN_ORIGINS)
def test_builtin_origins_are_allowed(client, origin):
    resp = client.get("/api/tags", headers={"Origin": origin, "Host": "127.0.0.1:11434"})
    assert resp.status_code == 200
    assert resp.headers[ACAO] == origin
    assert "Origin" in resp.headers.get("Vary", "")


@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_foreign_origins_get_no_allow_header(client, origin, method):
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    path = "/api/tags" if method == "GET" else "/api/pull"
    resp = client.open(path, method=method, headers=headers, data=b'{"model":"tiny"}',
                       content_type="text/plain")
    assert ACAO not in resp.headers
    assert "not allowed" in error_text(resp, 403)  # not even a "simple" request gets through


def test_preflight_for_an_allowed_origin(client):
    resp = client.options("/v1/chat/completions", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, "
                                          "x-stainless-brand-new"})
    assert resp.status_code == 204 and resp.get_data() == b""
    assert resp.headers[ACAO] == "http://localhost:5173"
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "user-agent", "accept", "x-requested-with",
            "openai-beta", "x-stainless-os", "x-stainless-brand-new"} <= allowed
    assert {"GET", "POST", "DELETE"} <= {
        m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert int(resp.headers["Access-Control-Max-Age"]) > 0


def test_allowed_headers_match_ollama():
    assert {"Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
            "OpenAI-Beta"} <= set(ALLOWED_HEADERS)
    assert any(h.startswith("x-stainless-") for h in ALLOWED_HEADERS)


def test_allowed_origin_can_read_errors_and_streams(client):
    origin = {"Origin": "http://localhost:3000"}
    missing = client.post("/api/chat", headers=origin, json={"model": "nope", "messages": []})
    assert missing.status_code == 404 and missing.headers[ACAO] == "http://localhost:3000"
    stream = client.post("/api/generate", headers=origin, json={"model": "tiny", "prompt": "hi",
                                                                "options": {"num_predict": 2}})
    assert stream.status_code == 200 and stream.mimetype == "application/x-ndjson"
    assert stream.headers[ACAO] == "http://localhost:3000"
    assert stream.get_data(as_text=True).strip().splitlines()[-1].startswith('{"model"')


def test_same_origin_page_is_not_cross_origin(client):
    resp = client.get("/api/tags", headers={"Host": "mybox.local:11434",
                                            "Origin": "http://mybox.local:11434"})
    assert resp.status_code == 200 and ACAO not in resp.headers


def test_ollama_origins_adds_patterns(tmp_path, mappings_file):
    c = make_client(tmp_path, mappings_file,
                    env={"OLLAMA_ORIGINS": "chrome-extension://*, https://my.app "
                                           ",https://*.corp.example"})
    for origin in ("chrome-extension://abcdef", "https://my.app", "https://a.corp.example",
                   "http://localhost:1"):
        resp = c.get("/api/version", headers={"Origin": origin})
        assert resp.status_code == 200 and resp.headers[ACAO] == origin, origin
    for origin in ("https://my.app.evil", "http://my.app", "https://corp.example",
                   "moz-extension://x"):
        resp = c.get("/api/version", headers={"Origin": origin})
        assert resp.status_code == 403 and ACAO not in resp.headers, origin


def test_ollama_origins_star_allows_all(tmp_path, mappings_file):
    c = make_client(tmp_path, mappings_file, env={"OLLAMA_ORIGINS": "*"})
    resp = c.get("/api/version", headers={"Origin": "https://anything.example"})
    assert resp.status_code == 200 and resp.headers[ACAO] == "*"
    pre = c.options("/api/chat", headers={"Origin": "https://anything.example",
                                          "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers[ACAO] == "*"


def test_real_server_cors(server):
    pre = requests.options(server + "/api/chat", timeout=10, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and pre.headers[ACAO] == "http://localhost:3000"
    foreign = requests.post(server + "/api/pull", data=b'{"model":"tiny"}', timeout=10,
                            headers={"Origin": "https://evil.example",
                                     "Content-Type": "text/plain"})
    assert foreign.status_code == 403 and ACAO not in foreign.headers
    assert foreign.json()["error"]
