"""Aggregates over the request log: a backend row's stats, the per-model A/B comparison (with a
per-bridge breakdown), and usage per bridge and per API key.

SQLAlchemy Core on a connection that `bridge.stats.store.Store` hands in; the same expressions
run on SQLite and PostgreSQL, and every aggregate is computed inside the database, so a large
request log is never loaded into Python.

Which records belong to a backend row (model, backend_type, endpoint_url):
- the same model key (Ollama name rules: `llama3` == `Llama3:latest`);
- `mlx` rows count records answered by MLX; `ollama` rows records answered by an upstream;
  `auto` rows both;
- an upstream record counts when its endpoint equals the row's `endpoint_url`; a row without
  one (the default upstream) counts the endpoints that no other row of that model names;
- local MLX records (no endpoint) count for `mlx` and `auto` rows, except an `mlx` row with an
  `endpoint_url`: that is a remote MLX engine, which counts its own endpoint's records only.

Percentiles are nearest-rank: the ceil(p/100 * n)-th smallest latency, a value that was observed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.stats.schema import backends, requests
from bridge.wire.names import ModelName

R = requests.c
_OK = R.status == "ok"


@dataclass
class BackendStats:
    """Read-only stats shown on a backend row (averages over successful requests)."""

    total_requests: int = 0
    total_errors: int = 0
    avg_tokens_per_sec: float | None = None
    avg_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def _count(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)


def _ok_avg(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.func.avg(sa.case((_OK, col)))


def backend_stats(conn: Connection, model_name: str, backend_type: str,
                  endpoint_url: str | None) -> BackendStats:
    """The stats of one backend row (see the module docstring for which records count)."""
    key = ModelName.parse(model_name).key
    answered_by = {"mlx": ("mlx",), "ollama": ("ollama",)}.get(backend_type, ("mlx", "ollama"))
    if endpoint_url:
        endpoint = R.endpoint == endpoint_url
    else:
        named = sa.select(backends.c.endpoint_url).where(backends.c.model_key == key,
                                                         backends.c.endpoint_url.is_not(None))
        endpoint = sa.or_(R.endpoint.is_(None), R.endpoint.not_in(named))
    if backend_type != "mlx" or not endpoint_url:
        # a local MLX record has no endpoint; a remote MLX engine's counts by its URL
        endpoint = sa.or_(sa.and_(R.backend == "mlx", R.endpoint.is_(None)), endpoint)
    # else an `mlx` row with an endpoint_url is that remote engine alone (routing/router.py)
    r = conn.execute(
        sa.select(sa.func.count(), _count(R.status == "error"), _ok_avg(R.tokens_per_sec),
                  _ok_avg(R.latency_ms))
        .where(R.model_key == key, R.backend.in_(answered_by), endpoint)).one()
    return BackendStats(int(r[0]), int(r[1]), _r(r[2]), _r(r[3]))


_GROUP = (R.model_key, R.backend, R.endpoint)


def _where(key: str | None, since: str | None) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if key is not None:
        where.append(R.model_key == key)
    if since is not None:
        where.append(R.ts >= since)
    return where


def _totals(group: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*group, sa.func.count(), _count(_OK), _count(R.status == "error"),
            _count(R.status == "canceled"), _count(R.fallback_from.is_not(None)),
            _ok_avg(R.latency_ms), _ok_avg(R.ttft_ms), _ok_avg(R.tokens_per_sec))


def _shape(r: Any, offset: int) -> dict[str, Any]:
    """The counts and averages of one `_totals` row whose group has `offset` columns."""
    n, ok, errors, canceled, fallbacks, lat, ttft, tps = r[offset:offset + 8]
    return {"requests": int(n), "ok": int(ok), "errors": int(errors), "canceled": int(canceled),
            "error_rate": round(int(errors) / int(n), 4), "fallbacks": int(fallbacks),
            "avg_latency_ms": _r(lat), "avg_ttft_ms": _r(ttft), "avg_tokens_per_sec": _r(tps)}


def comparison(conn: Connection, key: str | None, since: str | None) -> list[dict[str, Any]]:
    """`[{"model", "backends": [{backend, endpoint, requests, ..., p95_latency_ms, bridges}]}]`.

    `bridges` breaks each backend's numbers down by the bridge that served them (records from
    before bridges were named have `bridge_id` null).
    """
    where = _where(key, since)
    totals = conn.execute(sa.select(*_totals(_GROUP)).where(*where)
                          .group_by(*_GROUP).order_by(*_GROUP)).all()
    per_bridge: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in conn.execute(sa.select(*_totals((*_GROUP, R.bridge_id))).where(*where)
                          .group_by(*_GROUP, R.bridge_id).order_by(*_GROUP, R.bridge_id)):
        per_bridge.setdefault(tuple(r[:3]), []).append({"bridge_id": r[3], **_shape(r, 4)})
    pct = _percentiles(conn, where)
    models: dict[str, list[dict[str, Any]]] = {}
    for r in totals:
        group = tuple(r[:3])
        shaped = _shape(r, 3)
        models.setdefault(r[0], []).append({
            "backend": r[1], "endpoint": r[2], **shaped,
            "p50_latency_ms": _r(pct.get((*group, 50))),
            "p95_latency_ms": _r(pct.get((*group, 95))),
            "bridges": per_bridge.get(group, []),
        })
    return [{"model": _display(k), "backends": backends_} for k, backends_ in models.items()]


def _percentiles(conn: Connection, where: list[sa.ColumnElement[bool]]) -> dict[tuple, float]:
    """Nearest-rank p50 and p95 of successful requests' latency: {(group..., p): value}."""
    ranked = sa.select(
        *_GROUP, R.latency_ms,
        sa.func.row_number().over(partition_by=_GROUP, order_by=R.latency_ms).label("rn"),
        sa.func.count().over(partition_by=_GROUP).label("n"),
    ).where(_OK, *where).subquery()
    rn, n = ranked.c.rn, ranked.c.n
    # nearest rank: the ceil(p * n / 100)-th smallest value, i.e. one that was really observed
    cur = conn.execute(sa.select(ranked).where(
        sa.or_(rn == (50 * n + 99) // 100, rn == (95 * n + 99) // 100)))
    out: dict[tuple, float] = {}
    for model, backend, endpoint, value, rank, count in cur:
        for p in (50, 95):
            if rank == (p * count + 99) // 100:
                out[(model, backend, endpoint, p)] = value
    return out


def _usage(conn: Connection, col: sa.ColumnElement[Any], since: str | None,
           label: str) -> list[dict[str, Any]]:
    query = (sa.select(col, sa.func.count(), _count(_OK), _count(R.status == "error"),
                       sa.func.coalesce(sa.func.sum(R.prompt_tokens), 0),
                       sa.func.coalesce(sa.func.sum(R.eval_tokens), 0),
                       _ok_avg(R.latency_ms), sa.func.max(R.ts))
             .where(*_where(None, since)).group_by(col).order_by(col))
    if label == "api_key":
        query = query.where(col.is_not(None))
    return [{label: r[0], "requests": int(r[1]), "ok": int(r[2]), "errors": int(r[3]),
             "prompt_tokens": int(r[4]), "eval_tokens": int(r[5]),
             "avg_latency_ms": _r(r[6]), "last_request": r[7]} for r in conn.execute(query)]


def bridge_usage(conn: Connection, since: str | None) -> list[dict[str, Any]]:
    """Requests, errors and tokens per bridge (all models)."""
    return _usage(conn, R.bridge_id, since, "bridge_id")


def key_usage(conn: Connection, since: str | None) -> list[dict[str, Any]]:
    """Requests, errors and tokens per API key name (requests without a key left out)."""
    return _usage(conn, R.api_key, since, "api_key")


def _display(key: str) -> str:
    try:
        return ModelName.parse(key).display
    except ValueError:
        return key
