"""The request log stays bounded (field sizes, row count) and a full scan never holds up routing."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from pathlib import Path

import requests

from bridge.stats.metrics import Metrics
from bridge.stats.records import MAX_ERROR_CHARS, MAX_MODEL_CHARS, RequestRecord
from bridge.stats.store import Store
from bridge.stats.tracking import Tracker

from .conftest import start_server, stop_server, write_mappings

TOKEN = "request-log-secret"
RECORDS = 200_000


def rec(model: str = "m", error: str | None = None) -> RequestRecord:
    return RequestRecord(model=model, backend="ollama", endpoint="http://h:1",
                         status="error" if error else "ok", prompt_tokens=1, eval_tokens=1,
                         ttft_ms=1.0, latency_ms=2.0, tokens_per_sec=3.0, error=error)


def fill_log(path: Path, n: int) -> None:
    """n request records, 20 models over two backends, written in one statement."""
    Store(path).close()  # the schema
    with sqlite3.connect(path) as conn:
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO requests (ts, model, model_key, backend, endpoint, status, prompt_tokens, "
            "eval_tokens, ttft_ms, latency_ms, tokens_per_sec) "
            "SELECT '2025-01-01T00:00:00.000000Z', 'm' || (i % 20) || ':latest', "
            "'m' || (i % 20) || ':latest', "
            "CASE WHEN i % 3 THEN 'ollama' ELSE 'mlx' END, "
            "CASE WHEN i % 3 THEN 'http://127.0.0.1:1' END, "
            "CASE WHEN i % 10 THEN 'ok' ELSE 'error' END, 10, 20, 5.0, "
            "abs(random() % 100000) / 100.0, 30.0 "
            "FROM c", (n,))


def test_stored_fields_are_bounded(tmp_path):
    store = Store(tmp_path / "bridge.db")
    store.record_many([rec("m" * 100_000, "boom " * 200_000) for _ in range(20)])
    with sqlite3.connect(tmp_path / "bridge.db") as conn:
        sizes = conn.execute("SELECT MAX(LENGTH(model)), MAX(LENGTH(model_key)), "
                             "MAX(LENGTH(error)) "
                             "FROM requests").fetchone()
    assert sizes == (MAX_MODEL_CHARS, MAX_MODEL_CHARS, MAX_ERROR_CHARS)
    assert ((tmp_path / "bridge.db").stat().st_size
            + (tmp_path / "bridge.db-wal").stat().st_size < 1_000_000)
    store.close()


def test_the_first_batch_prunes_a_log_that_is_over_the_cap(tmp_path):
    fill_log(tmp_path / "bridge.db", 50)
    store = Store(tmp_path / "bridge.db")
    tracker = Tracker(store, Metrics(), keep_records=10)  # a restarted server, a smaller cap
    tracker.record(rec())
    tracker.flush()
    assert sum(b["requests"] for m in store.comparison() for b in m["backends"]) == 10
    store.close()


def test_routing_reads_do_not_wait_for_a_comparison(tmp_path):
    fill_log(tmp_path / "bridge.db", RECORDS)
    store = Store(tmp_path / "bridge.db")
    store.create({"model_name": "routed", "backend_type": "mlx"})
    took: list[float] = []

    def compare() -> None:
        started = time.perf_counter()
        store.comparison()
        took.append(time.perf_counter() - started)

    scan = threading.Thread(target=compare)
    scan.start()
    time.sleep(0.2)  # the scan is under way
    waits = []
    while scan.is_alive():
        started = time.perf_counter()
        assert [r.model_name for r in store.rows_for_model("routed")] == ["routed"]
        waits.append(time.perf_counter() - started)
        time.sleep(0.02)
    scan.join()
    assert took[0] > 0.4, f"the comparison took only {took[0]:.2f} s: too fast to show anything"
    assert waits and max(waits) < took[0] / 4, (max(waits), took[0])
    store.close()


def test_a_routed_request_beside_comparisons_over_200k_records(tmp_path, tiny_model_dir):
    """The real server: /api/show (a routed request: it reads the backend rows) keeps answering."""
    home = tmp_path / "home"
    home.mkdir()
    fill_log(home / "bridge.db", RECORDS)
    mappings = write_mappings(tmp_path / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(home),
                              "--upstream", "none"],
                             env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN})
    took: list[float] = []
    try:
        def compare() -> None:
            for _ in range(3):
                started = time.perf_counter()
                resp = requests.get(url + "/api/performance/comparison", timeout=120,
                                    headers={"Authorization": f"Bearer {TOKEN}"})
                assert len(resp.json()["models"]) == 20
                took.append(time.perf_counter() - started)

        scans = threading.Thread(target=compare)
        scans.start()
        time.sleep(0.2)
        latencies = []
        while scans.is_alive():
            started = time.perf_counter()
            assert requests.post(url + "/api/show", json={"model": "tiny"},
                                 timeout=60).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
        scans.join()
    finally:
        stop_server(proc)
    assert len(took) == 3 and min(took) > 0.4, took
    # Time routing spent stuck: a request that waited for a scan waits about as long as the scan.
    stuck = sum(t for t in latencies if t > 0.5)
    print(f"\ncomparisons_s={[round(t, 2) for t in took]} show_requests={len(latencies)} "
          f"median_s={statistics.median(latencies):.3f} max_s={max(latencies):.2f} "
          f"stuck_s={stuck:.2f}")
    assert max(latencies) < 3.0 and stuck < 0.3 * sum(took), (sorted(latencies)[-5:], took)
