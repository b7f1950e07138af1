"""Aggregates over the request log: a backend row's stats and the per-model A/B comparison.

Pure SQL + arithmetic on a connection that `bridge.stats.store.Store` hands in (under its lock).

Which records belong to a backend row (model, backend_type, endpoint_url):
- the same model key (Ollama name rules: `llama3` == `Llama3:latest`);
- `mlx` rows count records answered by MLX; `ollama` rows records answered by an upstream;
  `auto` rows both;
- an upstream record counts when its endpoint equals the row's `endpoint_url`; a row without
  one (the default upstream) counts the endpoints that no other row of that model names.

Percentiles are nearest-rank: the ceil(p/100 * n)-th smallest latency, a value that was observed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from bridge.wire.names import ModelName


@dataclass
class BackendStats:
    """Read-only stats shown on a backend row (averages over successful requests)."""

    total_requests: int = 0
    total_errors: int = 0
    avg_tokens_per_sec: float | None = None
    avg_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def backend_stats(conn: sqlite3.Connection, model_name: str, backend_type: str,
                  endpoint_url: str | None) -> BackendStats:
    """The stats of one backend row (see the module docstring for which records count)."""
    key = ModelName.parse(model_name).key
    answered_by = {"mlx": ("mlx",), "ollama": ("ollama",)}.get(backend_type, ("mlx", "ollama"))
    if endpoint_url:
        endpoint_sql, args = "endpoint = ?", [endpoint_url]
    else:
        endpoint_sql = ("(endpoint IS NULL OR endpoint NOT IN (SELECT endpoint_url FROM backends "
                        "WHERE model_key = ? AND endpoint_url IS NOT NULL))")
        args = [key]
    marks = ", ".join("?" for _ in answered_by)
    r = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(status = 'error'), 0), "
        "AVG(CASE WHEN status = 'ok' THEN tokens_per_sec END), "
        "AVG(CASE WHEN status = 'ok' THEN latency_ms END) "
        f"FROM requests WHERE model_key = ? AND backend IN ({marks}) "
        f"AND ((backend = 'mlx' AND endpoint IS NULL) OR {endpoint_sql})",  # remote MLX: by URL
        (key, *answered_by, *args)).fetchone()
    return BackendStats(r[0], r[1], _r(r[2]), _r(r[3]))


_GROUP = "model_key, backend, endpoint"


def comparison(conn: sqlite3.Connection, key: str | None,
               since: str | None) -> list[dict[str, Any]]:
    """`[{"model", "backends": [{backend, endpoint, requests, ..., p95_latency_ms}]}]` by model.

    Aggregated inside SQLite (percentiles with a window function), so a large request log is
    never loaded into Python.
    """
    where = "(? IS NULL OR model_key = ?) AND (? IS NULL OR ts >= ?)"
    args = (key, key, since, since)
    totals = conn.execute(
        f"SELECT {_GROUP}, COUNT(*), SUM(status = 'ok'), SUM(status = 'error'), "
        "SUM(status = 'canceled'), SUM(fallback_from IS NOT NULL), "
        "AVG(CASE WHEN status = 'ok' THEN latency_ms END), "
        "AVG(CASE WHEN status = 'ok' THEN ttft_ms END), "
        "AVG(CASE WHEN status = 'ok' THEN tokens_per_sec END) "
        f"FROM requests WHERE {where} GROUP BY {_GROUP} ORDER BY {_GROUP}", args).fetchall()
    pct = _percentiles(conn, where, args)
    models: dict[str, list[dict[str, Any]]] = {}
    for r in totals:
        group = (r[0], r[1], r[2])
        n, errors = r[3], r[5]
        models.setdefault(r[0], []).append({
            "backend": r[1], "endpoint": r[2], "requests": n, "ok": r[4], "errors": errors,
            "canceled": r[6], "error_rate": round(errors / n, 4), "fallbacks": r[7],
            "avg_latency_ms": _r(r[8]), "p50_latency_ms": _r(pct.get((*group, 50))),
            "p95_latency_ms": _r(pct.get((*group, 95))), "avg_ttft_ms": _r(r[9]),
            "avg_tokens_per_sec": _r(r[10]),
        })
    return [{"model": _display(k), "backends": backends} for k, backends in models.items()]


def _percentiles(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> dict[tuple, float]:
    """Nearest-rank p50 and p95 of successful requests' latency: {(group..., p): value}."""
    # nearest rank: the ceil(p * n / 100)-th smallest value, i.e. one that was really observed
    cur = conn.execute(
        f"SELECT {_GROUP}, latency_ms, rn, n FROM ("
        f"  SELECT {_GROUP}, latency_ms, "
        f"    ROW_NUMBER() OVER (PARTITION BY {_GROUP} ORDER BY latency_ms) AS rn, "
        f"    COUNT(*) OVER (PARTITION BY {_GROUP}) AS n "
        f"  FROM requests WHERE status = 'ok' AND {where}"
        ") WHERE rn = (50 * n + 99) / 100 OR rn = (95 * n + 99) / 100", args)
    out: dict[tuple, float] = {}
    for model, backend, endpoint, value, rn, n in cur:
        for p in (50, 95):
            if rn == (p * n + 99) // 100:
                out[(model, backend, endpoint, p)] = value
    return out


def _display(key: str) -> str:
    try:
        return ModelName.parse(key).display
    except ValueError:
        return key
