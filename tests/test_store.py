"""The SQLite store: backend rows, request records, stats, durability, concurrency, failures."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bridge.errors import Conflict, StoreUnavailable
from bridge.stats.metrics import Metrics
from bridge.stats.records import RequestRecord
from bridge.stats.store import Store
from bridge.stats.tracking import Tracker


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "bridge.db")
    yield s
    s.close()


def rec(model: str = "m", backend: str = "mlx", endpoint: str | None = None, status: str = "ok",
        latency: float = 100.0, tps: float | None = 50.0, **kw) -> RequestRecord:
    return RequestRecord(model=model, backend=backend, endpoint=endpoint, status=status,
                         prompt_tokens=kw.pop("prompt_tokens", 10),
                         eval_tokens=kw.pop("eval_tokens", 20), ttft_ms=kw.pop("ttft_ms", 5.0),
                         latency_ms=latency, tokens_per_sec=tps, **kw)


def test_create_get_update_toggle_delete(store: Store) -> None:
    row = store.create({"model_name": "m:latest", "backend_type": "mlx", "mlx_model": "org/m"})
    assert (row.id, row.model_name, row.backend_type, row.enabled,
            row.priority) == (1, "m:latest", "mlx", True, 0)
    assert row.created_at == row.updated_at and row.created_at.endswith("Z")
    assert store.get(row.id) == row
    time.sleep(0.002)
    updated = store.update(row.id, {"priority": 7, "description": "fast"})
    assert (updated.priority, updated.description, updated.mlx_model) == (7, "fast", "org/m")
    assert updated.created_at == row.created_at and updated.updated_at > row.updated_at
    assert store.toggle(row.id).enabled is False
    assert store.toggle(row.id).enabled is True
    assert store.delete(row.id) is True
    assert store.get(row.id) is None
    assert store.delete(row.id) is False
    assert store.update(row.id, {"priority": 1}) is None
    assert store.toggle(row.id) is None


def test_update_ignores_columns_that_are_not_writable(store: Store) -> None:
    row = store.create({"model_name": "m:latest", "backend_type": "mlx"})
    same = store.update(row.id, {"id": 99, "created_at": "x", "model_key": "other"})
    assert same == row  # nothing writable given: no change, not even updated_at


def test_rows_for_model_enabled_sorted_by_priority_then_id(store: Store) -> None:
    low = store.create({"model_name": "llama3:latest", "backend_type": "ollama", "priority": 1,
                        "endpoint_url": "http://a:1"})
    high = store.create({"model_name": "Llama3", "backend_type": "mlx", "priority": 9})
    tie = store.create({"model_name": "llama3:latest", "backend_type": "ollama", "priority": 1,
                        "endpoint_url": "http://b:1"})
    off = store.create({"model_name": "llama3", "backend_type": "auto", "priority": 50,
                        "enabled": False})
    store.create({"model_name": "llama3:8b", "backend_type": "mlx"})
    ids = [r.id for r in store.rows_for_model("LLAMA3:latest")]
    assert ids == [high.id, low.id, tie.id]  # disabled row and the other tag excluded
    assert off.id not in ids
    assert [r.id for r in store.rows_for_model("llama3:8b")] != ids
    assert store.rows_for_model("../etc") == []
    assert store.rows_for_model("unknown") == []


def test_list_rows_and_enabled_only(store: Store) -> None:
    a = store.create({"model_name": "b", "backend_type": "mlx"})
    b = store.create({"model_name": "a", "backend_type": "mlx", "enabled": False})
    assert [r.id for r in store.list_rows()] == [b.id, a.id]  # by model name
    assert [r.id for r in store.list_rows(enabled_only=True)] == [a.id]


def test_duplicate_model_backend_endpoint_is_a_conflict(store: Store) -> None:
    store.create({"model_name": "m", "backend_type": "ollama", "endpoint_url": "http://h:1"})
    with pytest.raises(Conflict):
        store.create({"model_name": "M:latest", "backend_type": "ollama", "endpoint_url": "http://h:1/"})
    store.create({"model_name": "m", "backend_type": "ollama", "endpoint_url": "http://h:2"})
    store.create({"model_name": "m", "backend_type": "ollama"})
    with pytest.raises(Conflict):
        store.create({"model_name": "m", "backend_type": "ollama", "endpoint_url": None})


def test_stats_match_model_backend_and_endpoint(store: Store) -> None:
    mlx = store.create({"model_name": "m", "backend_type": "mlx"})
    host_a = store.create({"model_name": "m", "backend_type": "ollama", "endpoint_url": "http://a:1"})
    default = store.create({"model_name": "m", "backend_type": "ollama"})
    auto = store.create({"model_name": "m", "backend_type": "auto", "endpoint_url": "http://a:1"})
    store.record_many([
        rec("m", "mlx", latency=100, tps=40), rec("M:latest", "mlx", latency=300, tps=60),
        rec("m", "mlx", status="error", latency=5, tps=None),
        rec("m", "mlx", status="canceled", latency=9999, tps=1),
        rec("m", "ollama", "http://a:1/", latency=50, tps=100),
        rec("m", "ollama", "http://default:11435", latency=70, tps=80),
        rec("other", "mlx", latency=1, tps=1),
    ])
    s = store.stats(mlx)
    assert (s.total_requests, s.total_errors, s.avg_tokens_per_sec,
            s.avg_latency_ms) == (4, 1, 50.0, 200.0)
    s = store.stats(host_a)
    assert (s.total_requests, s.total_errors, s.avg_latency_ms) == (1, 0, 50.0)
    # no endpoint_url = the default upstream: endpoints that no other row of the model names
    s = store.stats(default)
    assert (s.total_requests, s.avg_latency_ms, s.avg_tokens_per_sec) == (1, 70.0, 80.0)
    assert store.stats(auto).total_requests == 5  # MLX records + upstream records at http://a:1


def test_a_remote_mlx_row_counts_its_engine_not_the_local_one(store: Store) -> None:
    local = store.create({"model_name": "m", "backend_type": "mlx"})
    remote = store.create({"model_name": "m", "backend_type": "mlx",
                           "endpoint_url": "http://mac-a.local:8080"})
    store.record_many([
        rec("m", "mlx", status="error", latency=5, tps=None), rec("m", "mlx", latency=100, tps=40),
        rec("m", "mlx", "http://mac-a.local:8080", latency=30, tps=90),
    ])
    s = store.stats(remote)
    assert (s.total_requests, s.total_errors, s.avg_tokens_per_sec) == (1, 0, 90.0)
    assert store.stats(local).total_requests == 2


def test_stats_empty_row(store: Store) -> None:
    row = store.create({"model_name": "m", "backend_type": "mlx"})
    s = store.stats(row)
    assert s.to_dict() == {"total_requests": 0, "total_errors": 0, "avg_tokens_per_sec": None,
                           "avg_latency_ms": None}


def test_rows_and_records_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bridge.db"
    first = Store(path)
    row = first.create({"model_name": "m", "backend_type": "mlx", "priority": 3, "max_tokens": 64,
                        "temperature_default": 0.2, "timeout_seconds": 30.0, "description": "d"})
    first.record(rec("m", "mlx", latency=120))
    first.close()
    second = Store(path)
    assert second.get(row.id) == row
    assert second.stats(row).total_requests == 1
    assert second.stats(row).avg_latency_ms == 120.0
    second.close()


def test_concurrent_writers_from_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            store.create({"model_name": f"m{n}", "backend_type": "mlx"})
            for _ in range(50):
                store.record(rec(f"m{n}"))
                store.rows_for_model(f"m{n}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_rows()) == 8
    assert sum(store.stats(r).total_requests for r in store.list_rows()) == 400


def test_locked_database_gives_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = Store(path, timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.create({"model_name": "m", "backend_type": "mlx"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.create({"model_name": "m", "backend_type": "mlx"}).id == 1  # works once released
    store.close()


def test_corrupt_file_is_reported_and_recovers_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    path.write_bytes(b"this is not a database" * 200)
    store = Store(path)  # must not raise: the server keeps serving from the mapping file
    with pytest.raises(StoreUnavailable, match="not a database.*move the file aside"):
        store.rows_for_model("m")
    with pytest.raises(StoreUnavailable):
        store.record(rec())
    path.unlink()
    assert store.rows_for_model("m") == []  # re-tried on the next call, no restart needed
    store.close()


def test_prune_keeps_newest(store: Store) -> None:
    store.record_many([rec(latency=float(i)) for i in range(10)])
    assert store.prune(keep=3) == 7
    rows = store.comparison()[0]["backends"][0]
    assert rows["requests"] == 3 and rows["p50_latency_ms"] == 8.0


def test_comparison_percentiles_filters(store: Store) -> None:
    store.record_many([rec("a", "mlx", latency=float(i), ttft_ms=2.0, tps=10.0)
                       for i in range(1, 101)])
    store.record_many([rec("a", "ollama", "http://h:1", latency=500.0, tps=30.0, ttft_ms=None),
                       rec("a", "ollama", "http://h:1", status="error", latency=1.0, tps=None,
                           fallback_from="mlx"),
                       rec("b", "mlx", ts="2000-01-01T00:00:00.000000Z")])
    models = {m["model"]: m for m in store.comparison()}
    assert set(models) == {"a:latest", "b:latest"}
    mlx, ollama = models["a:latest"]["backends"]
    assert (mlx["backend"], mlx["requests"], mlx["errors"],
            mlx["error_rate"]) == ("mlx", 100, 0, 0.0)
    assert (mlx["avg_latency_ms"], mlx["p50_latency_ms"],
            mlx["p95_latency_ms"]) == (50.5, 50.0, 95.0)
    assert (mlx["avg_ttft_ms"], mlx["avg_tokens_per_sec"]) == (2.0, 10.0)
    assert (ollama["endpoint"], ollama["requests"], ollama["errors"],
            ollama["error_rate"]) == ("http://h:1", 2, 1, 0.5)
    assert (ollama["p95_latency_ms"], ollama["avg_ttft_ms"],
            ollama["fallbacks"]) == (500.0, None, 1)
    assert [m["model"] for m in store.comparison(model="A")] == ["a:latest"]
    since = store.comparison(since="2001-01-01T00:00:00.000000Z")
    assert [m["model"] for m in since] == ["a:latest"]


def test_tracker_writes_on_its_thread_and_flush_waits(store: Store) -> None:
    tracker = Tracker(store, Metrics())
    tracker.start()
    try:
        assert tracker.running
        for i in range(600):  # more than one batch
            tracker.record(rec(latency=float(i)))
        assert tracker.flush()
        assert store.comparison()[0]["backends"][0]["requests"] == 600
    finally:
        tracker.stop()
    assert not tracker.running


def test_tracker_stop_writes_what_is_queued(store: Store) -> None:
    tracker = Tracker(store, Metrics())
    tracker.record(rec())  # not started yet: queued
    tracker.start()
    tracker.record(rec())
    tracker.stop()
    assert store.comparison()[0]["backends"][0]["requests"] == 2


def test_tracker_full_queue_drops_and_counts(store: Store) -> None:
    metrics = Metrics()
    tracker = Tracker(store, metrics, max_queue=3)  # writer not started: the queue fills
    for _ in range(5):
        tracker.record(rec())
    assert metrics.registry.get_sample_value("mlx_bridge_tracking_dropped_total") == 2
    tracker.flush()
    assert store.comparison()[0]["backends"][0]["requests"] == 3


def test_tracker_survives_a_bad_record_and_store_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "bridge.db")
    tracker = Tracker(store, Metrics())
    tracker.start()
    try:
        tracker.record(rec(prompt_tokens=2**70))  # too big for SQLite: that batch is lost
        tracker.flush()
        tracker.record(rec())
        tracker.flush()
        assert tracker.running
        assert store.comparison()[0]["backends"][0]["requests"] == 1
    finally:
        tracker.stop()
        store.close()


def test_tracker_prunes_old_records(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bridge.stats.tracking._PRUNE_EVERY", 10)
    tracker = Tracker(store, Metrics(), keep_records=5)
    for _ in range(10):
        tracker.record(rec())
    tracker.flush()
    assert store.comparison()[0]["backends"][0]["requests"] == 5


def test_a_file_from_before_api_key_env_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    with sqlite3.connect(path) as conn:  # the backends table as the first release made it
        conn.execute("CREATE TABLE backends (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "model_name TEXT NOT NULL, model_key TEXT NOT NULL, "
                     "backend_type TEXT NOT NULL, endpoint_url TEXT, mlx_model TEXT, "
                     "enabled INTEGER NOT NULL DEFAULT 1, priority INTEGER NOT NULL DEFAULT 0, "
                     "max_tokens INTEGER, temperature_default REAL, timeout_seconds REAL, "
                     "description TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, "
                     "updated_at TEXT NOT NULL)")
        conn.execute("INSERT INTO backends (model_name, model_key, backend_type, endpoint_url, "
                     "created_at, updated_at) "
                     "VALUES ('m:latest', 'm:latest', 'ollama', 'http://h:1', 't', 't')")
    store = Store(path)
    [row] = store.rows_for_model("m")
    assert (row.endpoint_url, row.api_key_env) == ("http://h:1", None)
    updated = store.update(row.id, {"api_key_env": "MLX_BRIDGE_KEY_H"})
    assert updated.api_key_env == "MLX_BRIDGE_KEY_H"
    store.close()
    # opened again: no-op
    assert Store(path).rows_for_model("m")[0].api_key_env == "MLX_BRIDGE_KEY_H"
