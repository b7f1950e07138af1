"""The live page's series (bridge/stats/live.py through Store.live): buckets, rates, gaps, and the
newest requests. Fast: a real SQLite file, no server."""

from __future__ import annotations

from datetime import datetime, timezone

from bridge.stats.records import RequestRecord
from bridge.stats.store import Store

T0 = 1_800_000_000  # a bucket boundary for step 5


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def _rec(at: float, backend: str = "mlx", status: str = "ok", tokens: int = 10,
         ttft: float | None = 20.0, endpoint: str | None = None) -> RequestRecord:
    return RequestRecord(model="tiny", backend=backend, endpoint=endpoint, status=status,
                         prompt_tokens=3, eval_tokens=tokens, ttft_ms=ttft, latency_ms=50.0,
                         tokens_per_sec=100.0, ts=_ts(at))


def test_series_bucket_requests_per_backend_with_gaps(tmp_path):
    store = Store(tmp_path / "bridge.db")
    up = "http://127.0.0.1:9"
    store.record_many([
        _rec(T0 - 0.5),  # before the window: not counted
        _rec(T0 + 0.25, ttft=10.0),  # a fraction past the window's first second: counted
        _rec(T0 + 4.9, ttft=30.0),
        _rec(T0 + 6, backend="ollama", endpoint=up, status="error", tokens=0, ttft=None),
        _rec(T0 + 7, backend="ollama", endpoint=up, tokens=20, ttft=40.0),
    ])
    data = store.live(T0, T0 + 10, 5, recent=3)
    assert data["times"] == [T0, T0 + 5, T0 + 10]
    mlx, ollama = data["series"]
    assert (mlx["label"], ollama["label"]) == ("mlx", f"ollama@{up}")
    assert mlx["requests"] == 2 and mlx["errors"] == 0
    assert mlx["requests_per_s"] == [0.4, 0.0, 0.0]
    assert mlx["tokens_per_s"] == [4.0, 0.0, 0.0]
    assert mlx["ttft_ms"] == [20.0, None, None]  # a bucket without requests is a gap
    assert mlx["error_rate"] == [0.0, None, None]
    assert ollama["requests_per_s"] == [0.0, 0.4, 0.0]
    assert ollama["ttft_ms"] == [None, 40.0, None]  # the failed request has no TTFT
    assert ollama["error_rate"] == [None, 0.5, None]
    assert [r["ts"] for r in data["recent"]] == [_ts(T0 + 7), _ts(T0 + 6), _ts(T0 + 4.9)]
    assert data["recent"][1]["status"] == "error"
    store.close()


def test_an_empty_log_has_no_series(tmp_path):
    store = Store(tmp_path / "bridge.db")
    data = store.live(T0, T0 + 60, 30, recent=5)
    assert data == {"times": [T0, T0 + 30, T0 + 60], "series": [], "recent": []}
    store.close()
