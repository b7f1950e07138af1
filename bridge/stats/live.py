"""The Admin UI's live view over the request log: per-backend series in fixed time buckets
(requests/s, tokens/s, TTFT, error rate) and the newest requests.

SQLAlchemy Core on a connection that `bridge.stats.store.Store` hands in, like perf.py, so it runs
on SQLite and PostgreSQL. A bucket is `step` seconds of wall-clock time (UTC epoch seconds,
floored); a bucket without requests is 0 for the rates and None (a gap in the chart) for TTFT
and the error rate.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from bridge.stats.schema import requests

R = requests.c
RECENT_FIELDS = ("ts", "model", "backend", "endpoint", "status", "latency_ms", "ttft_ms",
                 "eval_tokens", "tokens_per_sec", "error", "fallback_from")


class epoch_of(FunctionElement):  # noqa: N801 (a SQL function's name)
    """The epoch second of a stored RFC3339 time (`2026-12-01T01:30:41.123456Z`): the one
    expression SQLAlchemy has no portable spelling for, compiled per dialect below."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(epoch_of, "sqlite")
def _epoch_sqlite(element: epoch_of, compiler: SQLCompiler, **kw: Any) -> str:
    ts = compiler.process(element.clauses, **kw)
    return f"CAST(strftime('%s', substr({ts}, 1, 19)) AS INTEGER)"


@compiles(epoch_of, "postgresql")
def _epoch_pg(element: epoch_of, compiler: SQLCompiler, **kw: Any) -> str:
    ts = compiler.process(element.clauses, **kw)
    return f"CAST(EXTRACT(EPOCH FROM CAST(substr({ts}, 1, 19) AS TIMESTAMP)) AS BIGINT)"


def live_view(conn: Connection, since_ts: str, start: int, end: int, step: int,
              recent: int) -> dict[str, Any]:
    """`{"times": [...], "series": [...], "recent": [...]}` for buckets start..end (epoch s)."""
    times = list(range(start, end + 1, step))
    bucket = ((epoch_of(R.ts) // step) * step).label("bucket")
    rows = conn.execute(
        sa.select(bucket, R.backend, R.endpoint, sa.func.count(),
                  sa.func.sum(R.eval_tokens),
                  sa.func.avg(sa.case((R.status == "ok", R.ttft_ms))),
                  sa.func.sum(sa.case((R.status == "error", 1), else_=0)))
        .where(R.ts >= since_ts).group_by(bucket, R.backend, R.endpoint)).all()
    index = {t: i for i, t in enumerate(times)}
    series: dict[tuple[str, str | None], dict[str, Any]] = {}
    for bucket_at, backend, endpoint, count, tokens, ttft, errors in rows:
        if bucket_at not in index:
            continue
        s = series.setdefault((backend, endpoint), _empty(backend, endpoint, len(times)))
        i = index[bucket_at]
        s["requests_per_s"][i] = round(count / step, 3)
        s["tokens_per_s"][i] = round(int(tokens or 0) / step, 2)
        s["ttft_ms"][i] = None if ttft is None else round(float(ttft), 1)
        s["error_rate"][i] = round(int(errors) / count, 3)
        s["requests"] += count
        s["errors"] += int(errors)
    cur = conn.execute(sa.select(*(R[f] for f in RECENT_FIELDS)).order_by(R.id.desc())
                       .limit(recent))
    return {"times": times, "series": sorted(series.values(), key=lambda s: s["label"]),
            "recent": [dict(zip(RECENT_FIELDS, r, strict=True)) for r in cur]}


def _empty(backend: str, endpoint: str | None, n: int) -> dict[str, Any]:
    label = backend if endpoint is None else f"{backend}@{endpoint}"
    return {"backend": backend, "endpoint": endpoint, "label": label, "requests": 0, "errors": 0,
            "requests_per_s": [0.0] * n, "tokens_per_s": [0.0] * n, "ttft_ms": [None] * n,
            "error_rate": [None] * n}
