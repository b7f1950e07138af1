"""Several bridges, one registry: two real bridge processes on one real PostgreSQL server.

A row changed through one bridge applies on the other from its next request; toggles from both at
once are all counted; a database killed mid-load does not stop serving (the last known rows keep
routing), and the request records made meanwhile arrive once it is back, each exactly once. Also
the migrations: a SQLite file from before alembic is upgraded in place, and `mlx-bridge db copy`
moves it into PostgreSQL, rows and stats intact.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bridge.stats.database import schema_revision
from bridge.stats.store import Store

from .fault_util import generate
from .helpers import start_server, stop_server, wait_until, write_mappings
from .pg_server import PgServer, query

TOKEN = "registry-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS = "/api/llm-backends"


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet(pg, tmp_path_factory, tiny_model_dir) -> Iterator[tuple[str, str, str]]:
    """(database url, bridge a's url, bridge b's url): one database, two bridge processes."""
    root = tmp_path_factory.mktemp("fleet")
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)},
                                                "other": {"mlx": str(tiny_model_dir)}})
    with pg.database("fleet") as db:
        procs, urls = [], []
        try:
            for name in ("a", "b"):
                proc, url = start_server(
                    ["--mappings", str(mappings), "--home", str(root / name), "--upstream",
                     "none"],
                    env={"MLX_BRIDGE_DATABASE_URL": db, "MLX_BRIDGE_ID": name,
                         "MLX_BRIDGE_ADMIN_TOKEN": TOKEN})
                procs.append(proc)
                urls.append(url)
            yield db, urls[0], urls[1]
        finally:
            for proc in procs:
                stop_server(proc)


def _post(url: str, path: str, body: dict | None = None) -> requests.Response:
    return requests.post(url + path, json=body, headers=AUTH, timeout=30)


def _source(url: str, model: str) -> str:
    """Where the bridge routes `model` now: "backends" (an admin row) or "mappings"."""
    return requests.get(f"{url}{ROWS}/model/{model}", timeout=10).json()["source"]


def test_a_row_changed_on_one_bridge_applies_on_the_other_at_its_next_request(fleet):
    _, a, b = fleet
    created = _post(a, ROWS, {"model_name": "tiny", "backend_type": "mlx", "max_tokens": 1})
    assert created.status_code == 201, created.text
    row = created.json()["id"]
    try:
        # no wait, no cache: b's very next request sees a's row (its max_tokens caps the reply)
        assert _source(b, "tiny") == "backends"
        assert generate(b, "tiny", num_predict=None).json()["eval_count"] == 1
        assert _post(b, f"{ROWS}/{row}/toggle").json()["enabled"] is False
        assert _source(a, "tiny") == "mappings"
        assert _post(a, f"{ROWS}/{row}/toggle").json()["enabled"] is True
        assert generate(b, "tiny", num_predict=None).json()["eval_count"] == 1
        assert requests.put(f"{b}{ROWS}/{row}", json={"max_tokens": 2}, headers=AUTH,
                            timeout=10).status_code == 200
        assert generate(a, "tiny", num_predict=None).json()["eval_count"] == 2
    finally:
        assert requests.delete(f"{b}{ROWS}/{row}", headers=AUTH, timeout=10).status_code == 204
    assert _source(a, "tiny") == "mappings"


def test_the_comparison_counts_every_bridge_and_says_which_served(fleet):
    _, a, b = fleet
    for url in (a, a, b):
        assert generate(url, "other", num_predict=2).status_code == 200
    for url in (a, b):  # each bridge writes its own records; both must be in before we compare
        requests.get(url + ROWS, headers=AUTH, timeout=10)
    body = requests.get(b + "/api/performance/comparison?model=other", timeout=10).json()
    [mlx] = body["models"][0]["backends"]
    by_bridge = {x["bridge_id"]: x["requests"] for x in mlx["bridges"]}
    assert by_bridge == {"a": 2, "b": 1} and mlx["requests"] == 3
    assert {x["bridge_id"] for x in body["bridges"]} >= {"a", "b"}


def test_toggles_from_two_bridges_at_once_all_count(fleet):
    _, a, b = fleet
    row = _post(a, ROWS, {"model_name": "other", "backend_type": "mlx"}).json()["id"]
    statuses: list[int] = []

    def flip(url: str, times: int) -> None:
        for _ in range(times):
            statuses.append(_post(url, f"{ROWS}/{row}/toggle").status_code)

    threads = [threading.Thread(target=flip, args=(url, 5)) for url in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flip(b, 1)
    assert statuses == [200] * 41
    # 41 flips of a row that started enabled: disabled, on both bridges (a lost update would
    # leave it either way at random)
    for url in (a, b):
        assert requests.get(f"{url}{ROWS}/{row}", headers=AUTH,
                            timeout=10).json()["enabled"] is False
        assert _source(url, "other") == "mappings"
    assert requests.delete(f"{a}{ROWS}/{row}", headers=AUTH, timeout=10).status_code == 204


def test_a_database_killed_mid_load_stops_nothing_and_loses_no_record(fleet, pg):
    db, a, b = fleet
    row = _post(a, ROWS, {"model_name": "tiny", "backend_type": "mlx", "max_tokens": 1}).json()
    assert _source(b, "tiny") == "backends"
    since = query(db, "SELECT to_char(now() AT TIME ZONE 'utc', "
                      "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")[0][0]
    answered: dict[str, list[int]] = {a: [], b: []}
    stop = threading.Event()

    def load(url: str) -> None:
        while not stop.is_set():
            r = generate(url, "tiny", num_predict=None)
            answered[url].append(r.json().get("eval_count", -r.status_code))

    threads = [threading.Thread(target=load, args=(url,)) for url in (a, b)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(answered[a]) >= 5, timeout=30)
        pg.kill()
        down_at = (len(answered[a]), len(answered[b]))
        assert wait_until(lambda: len(answered[a]) >= down_at[0] + 10
                          and len(answered[b]) >= down_at[1] + 10, timeout=30)
        outage = requests.get(a + ROWS, headers=AUTH, timeout=10)
        assert outage.status_code == 503 and "unavailable" in outage.json()["error"]
        assert requests.get(a + "/api/version", timeout=5).status_code == 200
        pg.start()
        up_at = len(answered[a])
        assert wait_until(lambda: len(answered[a]) >= up_at + 5, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    # every request was served, with the last known row (max_tokens 1) throughout the outage
    assert set(answered[a]) == {1} and set(answered[b]) == {1}, answered

    def stored() -> list[tuple]:
        try:
            return query(db, "SELECT bridge_id, count(*), count(DISTINCT rid) FROM requests "
                             "WHERE model = 'tiny' AND ts >= %s GROUP BY bridge_id ORDER BY 1",
                         since)
        except Exception:
            return []

    want = [("a", len(answered[a]), len(answered[a])), ("b", len(answered[b]), len(answered[b]))]
    assert wait_until(lambda: stored() == want, timeout=30), (stored(), want)
    time.sleep(1.5)  # a late duplicate would show up here
    assert stored() == want
    requests.delete(f"{a}{ROWS}/{row['id']}", headers=AUTH, timeout=10)


# ---- migrations -------------------------------------------------------------------------------

# The schema as the SQLite-only releases made it (bridge/stats/store.py before alembic).
OLD_SCHEMA = """
CREATE TABLE backends (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model_name TEXT NOT NULL, model_key TEXT NOT NULL,
    backend_type TEXT NOT NULL CHECK (backend_type IN ('mlx', 'ollama', 'auto')),
    endpoint_url TEXT, mlx_model TEXT, enabled INTEGER NOT NULL DEFAULT 1,
    priority INTEGER NOT NULL DEFAULT 0, max_tokens INTEGER, temperature_default REAL,
    timeout_seconds REAL, api_key_env TEXT, description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE UNIQUE INDEX backends_unique
    ON backends (model_key, backend_type, COALESCE(endpoint_url, ''));
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, model TEXT NOT NULL,
    model_key TEXT NOT NULL, backend TEXT NOT NULL, endpoint TEXT, status TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, eval_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL DEFAULT 0, ttft_ms REAL, latency_ms REAL NOT NULL,
    tokens_per_sec REAL, error TEXT, fallback_from TEXT);
CREATE INDEX requests_by_model ON requests (model_key, backend, endpoint);
CREATE INDEX requests_by_ts ON requests (ts);
"""


def _old_file(path: Path) -> None:
    """A bridge.db from the last SQLite-only release: 3 rows, 40 request records."""
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.executemany(
            "INSERT INTO backends (model_name, model_key, backend_type, endpoint_url, enabled, "
            "priority, max_tokens, api_key_env, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 't0', 't1')",
            [("m", "m:latest", "mlx", None, 1, 5, 7, None),
             ("m", "m:latest", "ollama", "http://h:1", 1, 1, None, "MLX_BRIDGE_KEY_H"),
             ("n:7b", "n:7b", "auto", None, 0, 0, None, None)])
        conn.executemany(
            "INSERT INTO requests (ts, model, model_key, backend, endpoint, status, "
            "prompt_tokens, eval_tokens, ttft_ms, latency_ms, tokens_per_sec, fallback_from) "
            "VALUES ('2025-01-01T00:00:00.000000Z', 'm', 'm:latest', ?, ?, ?, 3, 4, 1.0, ?, "
            "20.0, ?)",
            [("mlx" if i % 2 else "ollama", None if i % 2 else "http://h:1",
              "error" if i % 10 == 0 else "ok", float(i), "mlx" if i % 4 == 0 else None)
             for i in range(1, 41)])


def _view(store: Store) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows (without ids and times), their stats, and the comparison: what must survive."""
    rows = store.list_rows()
    plain = [{k: v for k, v in r.to_dict().items() if k not in ("id",)} for r in rows]
    return plain, [store.stats(r).to_dict() for r in rows], store.comparison()


def test_an_old_sqlite_file_is_upgraded_in_place_keeping_rows_and_stats(tmp_path):
    path = tmp_path / "bridge.db"
    _old_file(path)
    store = Store(path)
    assert schema_revision(store) == "0002_fleet"
    rows, stats, comparison = _view(store)
    assert [(r["model_name"], r["backend_type"], r["enabled"], r["priority"], r["max_tokens"],
             r["api_key_env"]) for r in rows] == [
        ("m", "mlx", True, 5, 7, None), ("m", "ollama", True, 1, None, "MLX_BRIDGE_KEY_H"),
        ("n:7b", "auto", False, 0, None, None)]
    assert [s["total_requests"] for s in stats] == [20, 20, 0]
    [model] = comparison
    assert sum(b["requests"] for b in model["backends"]) == 40
    assert [b["p50_latency_ms"] for b in model["backends"]] == [19.0, 18.0]
    # the new columns are there and work: a record with a bridge and a key, a key, a row flip
    store.toggle(3)
    assert [r.model_name for r in store.rows_for_model("n:7b")] == ["n:7b"]
    store.close()
    assert Store(path).list_rows()[2].enabled is True  # opened again: nothing migrates twice


def test_sqlite_is_copied_into_postgresql_with_rows_and_stats_and_only_once(tmp_path, pg):
    path = tmp_path / "bridge.db"
    _old_file(path)
    want = _view(Store(path))
    with pg.database("copied") as db:
        def run() -> dict:
            out = subprocess.run([sys.executable, "-m", "bridge", "db", "copy", "--from",
                                  str(path), "--to", db], capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)["copied"]

        assert run() == {"backends": 3, "api_keys": 0, "requests": 40}
        target = Store(db)
        rows, stats, comparison = _view(target)
        assert rows == want[0] and stats == want[1] and comparison == want[2]
        assert run() == {"backends": 0, "api_keys": 0, "requests": 0}  # nothing twice
        assert _view(target)[2] == want[2]
        target.close()


def test_the_live_view_buckets_on_postgresql_as_on_sqlite(tmp_path, pg):
    """The Admin UI's live series (the one expression compiled per dialect) agree."""
    from bridge.stats.records import RequestRecord

    now = int(time.time()) // 5 * 5
    views = []
    with pg.database("live") as db:
        for target in (db, tmp_path / "bridge.db"):
            store = Store(target)
            store.record_many(
                [RequestRecord("m", "mlx", None, "ok", 1, 2, 1.0, 2.0, 3.0) for _ in range(3)]
                + [RequestRecord("m", "ollama", "http://h:1", "error", 1, 2, None, 2.0, None)])
            view = store.live(now - 10, now + 5, 5, 2)
            views.append([(s["label"], s["requests"], s["errors"], sum(s["requests_per_s"]))
                          for s in view["series"]])
            store.close()
    assert views[0] == views[1] == [("mlx", 3, 0, 0.6), ("ollama@http://h:1", 1, 1, 0.2)]


def test_a_bridge_whose_database_is_down_at_start_serves_from_its_mapping_file(
        tmp_path, tiny_model_dir):
    from .helpers import free_port

    mappings = write_mappings(tmp_path / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    proc, url = start_server(
        ["--mappings", str(mappings), "--home", str(tmp_path / "home"), "--upstream", "none"],
        env={"MLX_BRIDGE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
             "MLX_BRIDGE_ADMIN_TOKEN": TOKEN})
    try:
        started = time.monotonic()
        for _ in range(3):
            assert generate(url, "tiny", num_predict=2).json()["eval_count"] == 2
        assert time.monotonic() - started < 10
        r = requests.get(url + ROWS, headers=AUTH, timeout=10)
        assert r.status_code == 503 and "Connection refused" in r.json()["error"]
        assert "postgresql+psycopg://postgres@127.0.0.1" in r.json()["error"]
    finally:
        stop_server(proc)


def test_records_held_through_an_outage_are_bounded_counted_and_written_in_order(tmp_path):
    """The tracker's side of an outage, on a real SQLite store made unreachable and back."""
    from bridge.errors import StoreUnavailable
    from bridge.stats.metrics import Metrics
    from bridge.stats.records import RequestRecord
    from bridge.stats.tracking import Tracker

    store = Store(tmp_path / "bridge.db")
    metrics = Metrics()
    tracker = Tracker(store, metrics, max_pending=5, bridge_id="here")
    real = store.record_many
    down = True

    def record_many(recs):
        if down:
            raise StoreUnavailable("backend store unavailable: test outage")
        return real(recs)

    store.record_many = record_many  # type: ignore[method-assign]
    for i in range(8):
        tracker.record(RequestRecord("m", "mlx", None, "ok", 1, 1, 1.0, float(i), 1.0))
        tracker.flush()
    assert tracker.pending == 5  # bounded: the 3 oldest dropped and counted
    assert metrics.registry.get_sample_value("mlx_bridge_tracking_dropped_total") == 3
    down = False
    tracker.record(RequestRecord("m", "mlx", None, "ok", 1, 1, 1.0, 8.0, 1.0))
    tracker.flush()
    assert tracker.pending == 0
    with sqlite3.connect(tmp_path / "bridge.db") as conn:
        rows = conn.execute("SELECT latency_ms, bridge_id FROM requests ORDER BY id").fetchall()
    assert rows == [(float(i), "here") for i in range(3, 9)]
