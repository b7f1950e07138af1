"""Admin API (/api/llm-backends), /api/performance/comparison: in-process and a real server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests

from bridge.app import create_app
from bridge.config import load_config
from bridge.stats.records import RequestRecord
from bridge.stats.store import DB_FILE, Store

from .conftest import start_server, stop_server

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "/api/llm-backends"


def make_app(home: Path, mappings: Path, token: str | None):
    return create_app(load_config({}, mappings_path=mappings, home=home, admin_token=token))


@pytest.fixture
def admin_app(tmp_path, mappings_file):
    """A fresh app with an admin token and its own empty database (engine not started)."""
    app = make_app(tmp_path, mappings_file, TOKEN)
    yield app
    app.extensions["bridge"].stop()


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


@pytest.fixture
def open_client(tmp_path, mappings_file):
    """An app without an admin token: reads allowed, writes refused."""
    app = make_app(tmp_path / "open", mappings_file, None)
    yield app.test_client()
    app.extensions["bridge"].stop()


def create(client, **fields):
    r = client.post(URL, json={"model_name": "m", "backend_type": "mlx", **fields}, headers=AUTH)
    assert r.status_code == 201, r.json
    return r.json


# ---- endpoints ----------------------------------------------------------------------------


def test_create_answers_201_with_the_row_and_location(admin) -> None:
    r = admin.post(URL, headers=AUTH, json={
        "model_name": "Qwen2.5-Coder:7B", "backend_type": "auto", "endpoint_url": "http://mac2:11434/",
        "mlx_model": "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit", "priority": 10,
        "max_tokens": 512,
        "temperature_default": 0.3, "timeout_seconds": 60, "description": "second Mac"})
    assert r.status_code == 201
    row = r.json
    assert r.headers["Location"] == f"{URL}/{row['id']}"
    assert row["model_name"] == "Qwen2.5-Coder:7B"
    assert row["endpoint_url"] == "http://mac2:11434"  # trailing slash dropped
    assert (row["enabled"], row["priority"], row["max_tokens"]) == (True, 10, 512)
    assert (row["temperature_default"], row["timeout_seconds"]) == (0.3, 60.0)
    assert row["created_at"].endswith("Z") and row["updated_at"] == row["created_at"]
    assert (row["total_requests"], row["total_errors"], row["avg_tokens_per_sec"],
            row["avg_latency_ms"]) == (0, 0, None, None)
    assert set(row) == {"id", "model_name", "backend_type", "endpoint_url", "mlx_model", "enabled",
                        "priority", "max_tokens", "temperature_default", "timeout_seconds",
                        "api_key_env", "protocol", "remote_model", "weight", "description",
                        "created_at", "updated_at", "total_requests", "total_errors",
                        "avg_tokens_per_sec", "avg_latency_ms"}


def test_create_defaults(admin) -> None:
    row = create(admin, model_name="llama3")
    assert row["model_name"] == "llama3:latest"
    assert (row["enabled"], row["priority"], row["description"], row["endpoint_url"],
            row["mlx_model"]) == (True, 0, "", None, None)


def test_list_get_and_enabled_only(admin) -> None:
    a = create(admin, model_name="a")
    b = create(admin, model_name="b", enabled=False)
    r = admin.get(URL, headers=AUTH)
    assert r.status_code == 200 and [x["id"] for x in r.json] == [a["id"], b["id"]]
    r = admin.get(f"{URL}?enabled_only=true", headers=AUTH)
    assert [x["id"] for x in r.json] == [a["id"]]
    assert len(admin.get(f"{URL}?enabled_only=false", headers=AUTH).json) == 2
    r = admin.get(f"{URL}?enabled_only=maybe", headers=AUTH)
    assert r.status_code == 400 and "enabled_only" in r.json["error"]
    r = admin.get(f"{URL}/{b['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json == b


def test_put_is_a_partial_update(admin) -> None:
    row = create(admin, model_name="m", priority=1, description="keep me")
    r = admin.put(f"{URL}/{row['id']}", headers=AUTH,
                  json={"backend_type": "ollama", "priority": 5})
    assert r.status_code == 200
    new = r.json
    assert (new["backend_type"], new["priority"], new["description"]) == ("ollama", 5, "keep me")
    assert new["created_at"] == row["created_at"] and new["updated_at"] >= row["updated_at"]
    r = admin.put(f"{URL}/{row['id']}", headers=AUTH, json={"max_tokens": None, "endpoint_url": "https://h"})
    assert (r.json["max_tokens"], r.json["endpoint_url"]) == (None, "https://h")
    assert admin.get(f"{URL}/{row['id']}", headers=AUTH).json["backend_type"] == "ollama"


def test_delete_answers_204_then_404(admin) -> None:
    row = create(admin)
    r = admin.delete(f"{URL}/{row['id']}", headers=AUTH)
    assert r.status_code == 204 and r.data == b""
    assert admin.get(f"{URL}/{row['id']}", headers=AUTH).status_code == 404
    assert admin.delete(f"{URL}/{row['id']}", headers=AUTH).status_code == 404


def test_toggle_flips_enabled(admin) -> None:
    row = create(admin)
    r = admin.post(f"{URL}/{row['id']}/toggle", headers=AUTH)
    assert r.status_code == 200 and r.json["enabled"] is False
    assert admin.post(f"{URL}/{row['id']}/toggle", headers=AUTH).json["enabled"] is True


@pytest.mark.parametrize("method,path", [
    ("get", f"{URL}/999"), ("put", f"{URL}/999"), ("delete", f"{URL}/999"),
    ("post", f"{URL}/999/toggle"), ("get", f"{URL}/abc"), ("get", f"{URL}/99999999999999999999999"),
    ("delete", f"{URL}/-1"),
])
def test_unknown_id_is_404_json(admin, method, path) -> None:
    r = getattr(admin, method)(path, headers=AUTH,
                               json={"priority": 1} if method == "put" else None)
    assert r.status_code == 404
    assert "not found" in r.json["error"]


def test_model_lookup_needs_no_auth_and_lists_enabled_rows(admin) -> None:
    top = create(admin, model_name="hf.co/user/repo:Q4_K_M", backend_type="ollama",
                 endpoint_url="http://h:1", priority=5)
    second = create(admin, model_name="hf.co/user/repo:Q4_K_M", backend_type="mlx",
                    mlx_model="/models/repo")
    off = create(admin, model_name="hf.co/user/repo:Q4_K_M", backend_type="auto", priority=99,
                 enabled=False)
    r = admin.get(f"{URL}/model/HF.co/user/repo:Q4_K_M")  # no Authorization header
    assert r.status_code == 200
    assert (r.json["id"], r.json["model_name"]) == (top["id"], "hf.co/user/repo:Q4_K_M")
    assert [x["id"] for x in r.json["rows"]] == [top["id"], second["id"]]
    assert off["id"] not in [x["id"] for x in r.json["rows"]]
    assert r.json["effective_backend"] == {"source": "backends", "backend_type": "ollama",
                                           "endpoint_url": "http://h:1", "mlx_model": None,
                                           "id": top["id"]}


def test_model_lookup_falls_back_to_mapping_then_upstream(admin, tiny_model_dir) -> None:
    r = admin.get(f"{URL}/model/tiny")
    assert r.status_code == 200 and r.json["rows"] == []
    assert r.json["effective_backend"]["source"] == "mappings"
    assert r.json["effective_backend"]["backend_type"] == "mlx"
    assert r.json["effective_backend"]["mlx_model"] == str(tiny_model_dir)
    assert (r.json["id"], r.json["backend_type"], r.json["source"]) == (None, "mlx", "mappings")
    r = admin.get(f"{URL}/model/not-mapped:1b")  # no row: a 404 saying where it goes
    assert r.status_code == 404 and "default upstream" in r.json["error"]


def test_a_row_overrides_the_mapping_until_disabled_or_deleted(admin) -> None:
    row = create(admin, model_name="tiny", backend_type="ollama")
    assert admin.get(f"{URL}/model/tiny").json["effective_backend"]["source"] == "backends"
    admin.post(f"{URL}/{row['id']}/toggle", headers=AUTH)
    assert admin.get(f"{URL}/model/tiny").json["effective_backend"]["source"] == "mappings"
    admin.post(f"{URL}/{row['id']}/toggle", headers=AUTH)
    admin.delete(f"{URL}/{row['id']}", headers=AUTH)
    assert admin.get(f"{URL}/model/tiny").json["effective_backend"]["source"] == "mappings"


def test_model_lookup_invalid_name_is_400(admin) -> None:
    r = admin.get(f"{URL}/model/a/b/c/d")
    assert r.status_code == 400 and "invalid model name" in r.json["error"]


def test_row_stats_come_from_the_request_records(admin_app, admin) -> None:
    mlx = create(admin, model_name="tiny", backend_type="mlx", priority=2)
    up = create(admin, model_name="tiny", backend_type="ollama", endpoint_url="http://h:1")
    tracker = admin_app.extensions["bridge"].tracker
    for latency, tps in ((100.0, 40.0), (300.0, 60.0)):
        tracker.record(RequestRecord("tiny", "mlx", None, "ok", 5, 10, 3.0, latency, tps))
    tracker.record(RequestRecord("tiny:latest", "ollama", "http://h:1", "error", 5, 0, None, 20.0,
                                 None, error="connection refused"))
    rows = {x["id"]: x for x in admin.get(URL, headers=AUTH).json}
    assert (rows[mlx["id"]]["total_requests"], rows[mlx["id"]]["total_errors"]) == (2, 0)
    assert (rows[mlx["id"]]["avg_latency_ms"],
            rows[mlx["id"]]["avg_tokens_per_sec"]) == (200.0, 50.0)
    assert (rows[up["id"]]["total_requests"], rows[up["id"]]["total_errors"]) == (1, 1)
    assert admin.get(f"{URL}/model/tiny").json["rows"][0]["total_requests"] == 2


# ---- auth ---------------------------------------------------------------------------------


ADMIN_CALLS = [("get", URL), ("get", f"{URL}/1"), ("post", URL), ("put", f"{URL}/1"),
               ("delete", f"{URL}/1"), ("post", f"{URL}/1/toggle")]


@pytest.mark.parametrize("method,path", ADMIN_CALLS)
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic c2VjcmV0", "secret", "Bearer ",
                                    "Bearer secretX"])
def test_admin_calls_need_the_token(admin, method, path, header) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = getattr(admin, method)(path, headers=headers,
                               json={"model_name": "m", "backend_type": "mlx"})
    assert r.status_code == 401
    assert "MLX_BRIDGE_ADMIN_TOKEN" in r.json["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_scheme_is_case_insensitive(admin) -> None:
    assert admin.get(URL, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_lookup_and_metrics_need_no_token(admin) -> None:
    assert admin.get(f"{URL}/model/tiny").status_code == 200
    assert admin.get("/metrics").status_code == 200
    assert admin.get("/api/performance/comparison").status_code == 200


def test_without_a_token_reads_are_open_and_writes_refused(open_client) -> None:
    assert open_client.get(URL).status_code == 200
    assert open_client.get("/api/performance/comparison").status_code == 200
    for method, path in [("post", URL), ("put", f"{URL}/1"), ("delete", f"{URL}/1"),
                         ("post", f"{URL}/1/toggle")]:
        r = getattr(open_client, method)(path, json={"model_name": "m", "backend_type": "mlx"},
                                          headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403
        assert "MLX_BRIDGE_ADMIN_TOKEN" in r.json["error"]
    assert open_client.get(URL).json == []  # nothing was written


# ---- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw,fragment", [
    (b"", "missing request body"),
    (b"{", "unexpected end of JSON input"),
    (b"[1, 2]", "cannot unmarshal array"),
    (b'"text"', "cannot unmarshal string"),
    (b"\xff\xfe", "invalid UTF-8"),
])
def test_malformed_body_is_400(admin, raw, fragment) -> None:
    row = create(admin)
    for method, path in [("post", URL), ("put", f"{URL}/{row['id']}")]:
        r = getattr(admin, method)(path, data=raw,
                                   headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400
        assert fragment in r.json["error"]
    assert admin.get(URL, headers=AUTH).json == [row]


@pytest.mark.parametrize("body,field", [
    ({"backend_type": "mlx"}, "model_name"),
    ({"model_name": "m"}, "backend_type"),
    ({"model_name": "m", "backend_type": "vllm"}, "backend_type"),
    ({"model_name": "m", "backend_type": None}, "backend_type"),
    ({"model_name": "../../etc/passwd", "backend_type": "mlx"}, "model_name"),
    ({"model_name": 7, "backend_type": "mlx"}, "model_name"),
    ({"model_name": "m", "backend_type": "ollama", "endpoint_url": "ftp://h"}, "endpoint_url"),
    ({"model_name": "m", "backend_type": "ollama", "endpoint_url": "localhost:11434"},
     "endpoint_url"),
    ({"model_name": "m", "backend_type": "ollama", "endpoint_url": "http://h:99999"},
     "endpoint_url"),
    ({"model_name": "m", "backend_type": "ollama", "endpoint_url": "http://h/?x=1"},
     "endpoint_url"),
    ({"model_name": "m", "backend_type": "mlx", "mlx_model": "relative/../x"}, "mlx_model"),
    ({"model_name": "m", "backend_type": "mlx", "mlx_model": ""}, "mlx_model"),
    ({"model_name": "m", "backend_type": "mlx", "priority": "5"}, "priority"),
    ({"model_name": "m", "backend_type": "mlx", "priority": 1.5}, "priority"),
    ({"model_name": "m", "backend_type": "mlx", "priority": True}, "priority"),
    ({"model_name": "m", "backend_type": "mlx", "priority": -1}, "priority"),
    ({"model_name": "m", "backend_type": "mlx", "priority": 10**30}, "priority"),
    ({"model_name": "m", "backend_type": "mlx", "priority": None}, "priority"),
    ({"model_name": "m", "backend_type": "mlx", "enabled": "true"}, "enabled"),
    ({"model_name": "m", "backend_type": "mlx", "enabled": 1}, "enabled"),
    ({"model_name": "m", "backend_type": "mlx", "max_tokens": -5}, "max_tokens"),
    ({"model_name": "m", "backend_type": "mlx", "max_tokens": 0}, "max_tokens"),
    ({"model_name": "m", "backend_type": "mlx", "temperature_default": -0.1},
     "temperature_default"),
    ({"model_name": "m", "backend_type": "mlx", "temperature_default": "hot"},
     "temperature_default"),
    ({"model_name": "m", "backend_type": "mlx", "timeout_seconds": 0}, "timeout_seconds"),
    ({"model_name": "m", "backend_type": "mlx", "timeout_seconds": -3}, "timeout_seconds"),
    ({"model_name": "m", "backend_type": "mlx", "description": ["x"]}, "description"),
    ({"model_name": "m", "backend_type": "mlx", "description": "x" * 5000}, "description"),
    ({"model_name": "m", "backend_type": "mlx", "color": "red", "size": 1}, "color, size"),
    ({"model_name": "m", "backend_type": "mlx", "id": 5}, "id"),
    ({"model_name": "m", "backend_type": "mlx", "total_requests": 5}, "total_requests"),
])
def test_invalid_fields_on_create_are_422_naming_the_field(admin, body, field) -> None:
    r = admin.post(URL, json=body, headers=AUTH)
    assert r.status_code == 422, r.json
    assert field in r.json["error"]
    assert admin.get(URL, headers=AUTH).json == []


@pytest.mark.parametrize("body,field", [
    ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ({"updated_at": "x"}, "updated_at"),
    ({"id": 3}, "id"),
    ({"avg_latency_ms": 1.0}, "avg_latency_ms"),
    ({"backend_type": "gpu"}, "backend_type"),
    ({"model_name": None}, "model_name"),
    ({"enabled": None}, "enabled"),
    ({"nonsense": 1}, "nonsense"),
])
def test_invalid_fields_on_update_are_422(admin, body, field) -> None:
    row = create(admin)
    r = admin.put(f"{URL}/{row['id']}", json=body, headers=AUTH)
    assert r.status_code == 422 and field in r.json["error"]
    assert admin.get(f"{URL}/{row['id']}", headers=AUTH).json == row  # unchanged


def test_duplicate_row_is_409(admin) -> None:
    create(admin, model_name="m", backend_type="ollama", endpoint_url="http://h:1")
    r = admin.post(URL, headers=AUTH, json={"model_name": "M:latest", "backend_type": "ollama",
                                            "endpoint_url": "http://h:1/"})
    assert r.status_code == 409 and "already exists" in r.json["error"]


# ---- performance comparison ----------------------------------------------------------------


def test_performance_comparison(admin_app, admin) -> None:
    tracker = admin_app.extensions["bridge"].tracker
    for i in range(1, 21):
        tracker.record(RequestRecord("tiny", "mlx", None, "ok", 5, 10, 2.0, float(i * 10), 50.0))
    tracker.record(RequestRecord("tiny", "ollama", "http://h:1", "ok", 5, 10, 8.0, 400.0, 25.0))
    tracker.record(RequestRecord("tiny", "ollama", "http://h:1", "error", 5, 0, None, 3.0, None))
    tracker.record(RequestRecord("other", "mlx", None, "ok", 1, 1, 1.0, 1.0, 1.0,
                                 ts="2001-01-01T00:00:00.000000Z"))
    r = admin.get("/api/performance/comparison", headers=AUTH)
    assert r.status_code == 200
    models = {m["model"]: m["backends"] for m in r.json["models"]}
    assert set(models) == {"tiny:latest", "other:latest"}
    mlx, up = models["tiny:latest"]
    assert (mlx["backend"], mlx["requests"], mlx["p50_latency_ms"],
            mlx["p95_latency_ms"]) == ("mlx", 20, 100.0, 190.0)
    assert (mlx["avg_latency_ms"], mlx["avg_ttft_ms"],
            mlx["avg_tokens_per_sec"]) == (105.0, 2.0, 50.0)
    assert (up["endpoint"], up["requests"], up["errors"],
            up["error_rate"]) == ("http://h:1", 2, 1, 0.5)
    r = admin.get("/api/performance/comparison?model=Tiny&since=2020-01-01T00:00:00Z", headers=AUTH)
    assert [m["model"] for m in r.json["models"]] == ["tiny:latest"]
    assert r.json["since"] == "2020-01-01T00:00:00.000000Z"
    r = admin.get("/api/performance/comparison?since=2020-01-01T01:00:00%2B01:00", headers=AUTH)
    assert {m["model"] for m in r.json["models"]} == {"tiny:latest"}


@pytest.mark.parametrize("query,fragment", [("since=yesterday", "since"),
                                            ("model=../x", "invalid model name"),
                                            ("since=0001-01-01T00:00:00%2B01:00", "since")])
def test_performance_comparison_bad_query_is_400(admin, query, fragment) -> None:
    r = admin.get(f"/api/performance/comparison?{query}", headers=AUTH)
    assert r.status_code == 400 and fragment in r.json["error"]


# ---- store failures -------------------------------------------------------------------------


def test_corrupt_database_gives_503_and_the_server_keeps_serving(tmp_path, mappings_file) -> None:
    (tmp_path / DB_FILE).write_bytes(b"garbage" * 1000)
    app = make_app(tmp_path, mappings_file, TOKEN)
    client = app.test_client()
    for r in (client.get(URL, headers=AUTH), client.get(f"{URL}/model/tiny"),
              client.post(URL, headers=AUTH, json={"model_name": "m", "backend_type": "mlx"})):
        assert r.status_code == 503
        assert DB_FILE in r.json["error"] and "not a database" in r.json["error"]
    assert client.get("/api/version").status_code == 200
    assert client.get("/metrics").status_code == 200


# ---- a real server process: rows and stats survive a crash and a restart --------------------


def test_rows_and_stats_survive_kill_and_restart(tmp_path, mappings_file) -> None:
    home = tmp_path / "home"
    args = ["--mappings", str(mappings_file), "--home", str(home)]
    env = {"MLX_BRIDGE_ADMIN_TOKEN": TOKEN}
    proc, url = start_server(args, env=env)
    try:
        assert requests.get(url + URL, timeout=10).status_code == 401
        made = [requests.post(url + URL, headers=AUTH, timeout=10, json=body).json() for body in (
            {"model_name": "tiny", "backend_type": "mlx", "priority": 5, "max_tokens": 32},
            {"model_name": "tiny", "backend_type": "ollama", "endpoint_url": "http://127.0.0.1:9"},
        )]
        r = requests.put(f"{url}{URL}/{made[1]['id']}", headers=AUTH, timeout=10,
                         json={"enabled": False})
        assert r.status_code == 200
        # Request records written by another process into the same WAL database (the server's
        # own tracker is exercised in-process); the server must see them without a restart.
        recorder = Store(home / DB_FILE)
        recorder.record_many([RequestRecord("tiny", "mlx", None, "ok", 4, 8, 2.0, 100.0 + i, 40.0)
                              for i in range(3)])
        recorder.close()
        for _ in range(2):  # and two real requests, recorded by the server's own tracker
            r = requests.post(url + "/api/generate", timeout=60, json={
                "model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
            assert r.status_code == 200, r.text
        before = requests.get(url + URL, headers=AUTH, timeout=10).json()
        assert before[0]["total_requests"] == 5
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a clean shutdown
        proc.wait(10)
    proc, url = start_server(args, env=env)
    try:
        after = requests.get(url + URL, headers=AUTH, timeout=10).json()
        assert after == before
        assert (after[0]["total_requests"], after[0]["total_errors"],
                after[0]["max_tokens"]) == (5, 0, 32)
        assert after[0]["avg_latency_ms"] > 0 and after[0]["avg_tokens_per_sec"] > 0
        assert after[1]["enabled"] is False
        lookup = requests.get(f"{url}{URL}/model/tiny:latest", timeout=10).json()
        assert [x["id"] for x in lookup["rows"]] == [made[0]["id"]]
    finally:
        stop_server(proc)


def test_a_model_loaded_under_an_admin_rows_name_is_in_ps(admin_app, tiny_model_dir) -> None:
    """A row naming a model no mapping entry has, served from its own `mlx_model` directory:
    once it has answered, /api/ps lists it under the row's name (it was left out, while
    /metrics counted it as loaded)."""
    admin_app.extensions["bridge"].start()
    client = admin_app.test_client()
    create(client, model_name="coder:7b", mlx_model=str(tiny_model_dir))
    r = client.post("/api/chat", json={"model": "coder:7b", "stream": False, "options": {
        "num_predict": 2}, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["X-Bridge-Backend"] == "mlx", r.json
    ps = client.get("/api/ps").json["models"]
    row = next(m for m in ps if m["name"] == "coder:7b")
    assert row["size"] > 0 and row["digest"] and row["details"]["format"]


def test_the_lookup_of_a_mapped_remote_engine_shows_its_endpoint(tmp_path) -> None:
    """A mapping entry that names a remote engine: its row form and `effective_backend` carry
    the endpoint, protocol and remote model (they read null, while the plan named them)."""
    mappings = tmp_path / "m.yaml"
    mappings.write_text("models:\n  remote-mlx:\n    backend: mlx\n"
                        "    endpoint_url: http://mac-b.local:8080\n"
                        "    protocol: openai\n    remote_model: mlx-community/Some-4bit\n")
    app = make_app(tmp_path / "home", mappings, TOKEN)
    try:
        body = app.test_client().get(f"{URL}/model/remote-mlx").json
    finally:
        app.extensions["bridge"].stop()
    assert body["source"] == "mappings"
    assert (body["endpoint_url"], body["protocol"], body["remote_model"]) == (
        "http://mac-b.local:8080", "openai", "mlx-community/Some-4bit")
    assert body["effective_backend"]["endpoint_url"] == "http://mac-b.local:8080"
    assert body["plan"]["targets"][0]["endpoint_url"] == body["endpoint_url"]


def test_an_ollama_row_with_no_upstream_says_why_its_model_is_not_served(tmp_path,
                                                                        mappings_file) -> None:
    """A row sending a mapped model to the upstream while none is configured: still Ollama's
    404 text (clients match it), now saying why (it read as if the model did not exist)."""
    app = create_app(load_config({}, mappings_path=mappings_file, home=tmp_path,
                                 admin_token=TOKEN, upstream="none"))
    try:
        client = app.test_client()
        create(client, model_name="tiny", backend_type="ollama")
        r = client.post("/api/chat", json={"model": "tiny", "stream": False,
                                           "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404
        assert r.json["error"].startswith("model 'tiny' not found")
        assert "its backend is ollama" in r.json["error"]
        assert "none is configured (--upstream none)" in r.json["error"]
        unknown = client.post("/api/chat", json={"model": "never-mapped", "stream": False,
                                                 "messages": [{"role": "user", "content": "hi"}]})
        assert unknown.status_code == 404 and "its backend" not in unknown.json["error"]
    finally:
        app.extensions["bridge"].stop()
