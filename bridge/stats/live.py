"""The Admin UI's live view over the request log: per-backend series in fixed time buckets
(requests/s, tokens/s, TTFT, error rate) and the newest requests.

Pure SQL + arithmetic on a connection that `bridge.stats.store.Store` hands in, like perf.py.
A bucket is `step` seconds of wall-clock time (UTC epoch seconds, floored); a bucket without
requests is 0 for the rates and None (a gap in the chart) for TTFT and the error rate.
"""

from __future__ import annotations

import sqlite3
from typing import Any

# the epoch second of a stored RFC3339 time (`2026-12-01T01:30:41.123456Z`)
_EPOCH = "CAST(strftime('%s', substr(ts, 1, 19)) AS INTEGER)"
RECENT_FIELDS = ("ts", "model", "backend", "endpoint", "status", "latency_ms", "ttft_ms",
                 "eval_tokens", "tokens_per_sec", "error", "fallback_from")


def live_view(conn: sqlite3.Connection, since_ts: str, start: int, end: int, step: int,
              recent: int) -> dict[str, Any]:
    """`{"times": [...], "series": [...], "recent": [...]}` for buckets start..end (epoch s)."""
    times = list(range(start, end + 1, step))
    rows = conn.execute(
        f"SELECT ({_EPOCH} / ?) * ? AS bucket, backend, endpoint, COUNT(*), "
        "SUM(eval_tokens), AVG(CASE WHEN status = 'ok' THEN ttft_ms END), "
        "SUM(status = 'error') FROM requests WHERE ts >= ? GROUP BY bucket, backend, endpoint",
        (step, step, since_ts)).fetchall()
    index = {t: i for i, t in enumerate(times)}
    series: dict[tuple[str, str | None], dict[str, Any]] = {}
    for bucket, backend, endpoint, count, tokens, ttft, errors in rows:
        if bucket not in index:
            continue
        s = series.setdefault((backend, endpoint), _empty(backend, endpoint, len(times)))
        i = index[bucket]
        s["requests_per_s"][i] = round(count / step, 3)
        s["tokens_per_s"][i] = round((tokens or 0) / step, 2)
        s["ttft_ms"][i] = None if ttft is None else round(ttft, 1)
        s["error_rate"][i] = round(errors / count, 3)
        s["requests"] += count
        s["errors"] += errors
    cur = conn.execute(f"SELECT {', '.join(RECENT_FIELDS)} FROM requests ORDER BY id DESC "
                       "LIMIT ?", (recent,))
    return {"times": times, "series": sorted(series.values(), key=lambda s: s["label"]),
            "recent": [dict(zip(RECENT_FIELDS, r, strict=True)) for r in cur]}


def _empty(backend: str, endpoint: str | None, n: int) -> dict[str, Any]:
    label = backend if endpoint is None else f"{backend}@{endpoint}"
    return {"backend": backend, "endpoint": endpoint, "label": label, "requests": 0, "errors": 0,
            "requests_per_s": [0.0] * n, "tokens_per_s": [0.0] * n, "ttft_ms": [None] * n,
            "error_rate": [None] * n}
