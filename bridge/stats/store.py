"""The state database: backend rows (admin API), API keys, and the request log (tracking).

One interface, two engines, through SQLAlchemy Core (no SQL written per dialect):
- SQLite (the default, no setup): `$MLX_BRIDGE_HOME/bridge.db` in WAL mode. Writes run in one
  `BEGIN IMMEDIATE` transaction each (so a `kill -9` loses at most what was not yet written);
  routing reads through their own short-timeout connections, full scans through a connection of
  their own, so a read on the request path never queues behind a write or a scan.
- PostgreSQL when `MLX_BRIDGE_DATABASE_URL=postgresql://...` (psycopg 3): several bridges share
  one registry and one request log.

The schema is versioned by alembic (bridge/stats/migrations/, shipped in the package); `Store`
runs the migrations on first use, so a file from an older release is upgraded in place, rows
and stats kept.

Several bridges, one registry: every write to the registry (backend rows, keys) bumps the
`registry_version` counter in the same transaction. The request path reads that counter (one
tiny query) and reloads its snapshot of rows and keys only when it moved, so a change made
through any bridge applies on every bridge from its next request. When the database cannot be
reached, routing keeps the last snapshot (retrying once a second, not on every request), and
the tracker keeps request records in memory until it returns (bridge/stats/tracking.py).

Any database failure (locked, corrupt, unreachable) becomes `StoreUnavailable` (503) naming the
database; the server itself keeps running. Knows no HTTP. The records it stores and returns
are in bridge/stats/records.py, its connections and migrations in bridge/stats/database.py
(`Database`, which `Store` extends), copying one database into another in bridge/stats/copy.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.errors import StoreUnavailable
from bridge.stats.database import Database, bump
from bridge.stats.live import live_view
from bridge.stats.perf import BackendStats, backend_stats, bridge_usage, comparison, key_usage
from bridge.stats.records import (
    KEY_FIELDS,
    KEY_LIMITS,
    ApiKey,
    BackendRow,
    RequestRecord,
    Snapshot,
    backend_row,
    hash_key,
    model_key,
    norm_endpoint,
    now_rfc3339,
    record_row,
    writable,
)
from bridge.stats.schema import api_keys, backends, registry_version, requests
from bridge.wire.names import ModelName

log = logging.getLogger(__name__)

DB_FILE = "bridge.db"
PRUNE_CHUNK = 20_000  # request records deleted per transaction
OUTAGE_RETRY = 1.0  # while the database is down, routing asks it at most once a second


class Store(Database):
    """Backend rows, API keys and request records; safe to share between threads."""

    def __init__(self, target: str | Path, *, timeout: float = 2.0) -> None:
        """Open (or create) the database and migrate it; a broken one is reported, not raised."""
        super().__init__(target, timeout=timeout)
        self._snapshot: Snapshot | None = None
        self._retry_at = 0.0  # while down: when routing asks the database again
        self._down_error: StoreUnavailable | None = None  # the last failure, before any snapshot
        self._down_logged = False
        try:
            self._ready()
        except StoreUnavailable as exc:  # keep serving: the router falls back to the mappings
            log.error("state database unavailable database=%s error=%r", self.name, exc.message)

    # ---- the registry snapshot (request path) -----------------------------------------------

    def snapshot(self) -> Snapshot:
        """The current rows and keys: one counter read per call, a reload when it moved.

        While the database is unreachable the last snapshot is kept (asked again at most once
        a second); with none yet, StoreUnavailable.
        """
        snap = self._snapshot
        if time.monotonic() < self._retry_at:
            if snap is not None:
                return snap
            if self._down_error is not None:  # never reached: fail fast, not a wait per request
                raise self._down_error
        try:
            with self._read() as conn:
                version = conn.execute(sa.select(registry_version.c.version)).scalar_one()
                if snap is None or version != snap.version:
                    snap = Snapshot.build(version, self._rows(conn, None), self._keys(conn))
                    self._snapshot = snap
        except (StoreUnavailable, sa.exc.SQLAlchemyError) as exc:
            if snap is None:
                if not self.sqlite and isinstance(exc, StoreUnavailable):
                    # a server not answering may cost a connect timeout per try: once a second
                    self._down_error = exc
                    self._retry_at = time.monotonic() + OUTAGE_RETRY
                raise
            self._retry_at = time.monotonic() + OUTAGE_RETRY
            if not self._down_logged:
                self._down_logged = True
                log.error("state database unreachable, routing on the last known rows "
                          "database=%s version=%d error=%r", self.name, snap.version,
                          getattr(exc, "message", str(exc)))
            return snap
        if self._down_logged:
            self._down_logged = False
            log.info("state database reachable again database=%s version=%d", self.name,
                     snap.version)
        return snap

    def registry_version(self) -> int:
        return self.snapshot().version

    # ---- backend rows -----------------------------------------------------------------------

    def rows_for_model(self, model_name: str) -> list[BackendRow]:
        """ENABLED rows for a model (Ollama name rules), highest priority first, then by id.

        From the snapshot (see `snapshot`). An invalid name gives []; a database never reached
        raises StoreUnavailable (503).
        """
        parsed = ModelName.try_parse(model_name)
        if parsed is None:
            return []
        return list(self.snapshot().by_model.get(parsed.key, ()))

    def list_rows(self, enabled_only: bool = False) -> list[BackendRow]:
        """Every row (or only enabled ones) by model name, then priority (high first), then id."""
        with self._read() as conn:
            return self._rows(conn, None, enabled_only)

    def get(self, row_id: int) -> BackendRow | None:
        with self._read() as conn:
            rows = self._rows(conn, row_id)
            return rows[0] if rows else None

    @staticmethod
    def _rows(conn: Connection, row_id: int | None,
              enabled_only: bool = False) -> list[BackendRow]:
        query = sa.select(backends).order_by(backends.c.model_key, backends.c.priority.desc(),
                                             backends.c.id)
        if row_id is not None:
            query = query.where(backends.c.id == row_id)
        if enabled_only:
            query = query.where(backends.c.enabled == 1)
        return [backend_row(r) for r in conn.execute(query).mappings()]

    def create(self, values: Mapping[str, Any]) -> BackendRow:
        """Insert a row from validated values (`model_name` and `backend_type` required)."""
        data = {"enabled": True, "priority": 0, "description": "", **writable(values)}
        data["enabled"] = int(bool(data["enabled"]))
        data["endpoint_url"] = norm_endpoint(data.get("endpoint_url"))
        data["model_key"] = model_key(data["model_name"])
        data["created_at"] = data["updated_at"] = now_rfc3339()
        with self._write() as conn:
            row_id = conn.execute(
                sa.insert(backends).values(data).returning(backends.c.id)).scalar_one()
            bump(conn)
        log.info("backend created id=%s model=%s backend=%s endpoint=%s", row_id,
                 data["model_name"], data["backend_type"], data["endpoint_url"])
        return self.get(row_id)  # type: ignore[return-value]

    def update(self, row_id: int, changes: Mapping[str, Any]) -> BackendRow | None:
        """Apply a partial update of writable fields; None when the id does not exist."""
        data = writable(changes)
        if "endpoint_url" in data:
            data["endpoint_url"] = norm_endpoint(data["endpoint_url"])
        if "model_name" in data:
            data["model_key"] = model_key(data["model_name"])
        if "enabled" in data:
            data["enabled"] = int(bool(data["enabled"]))
        if data:
            data["updated_at"] = now_rfc3339()
            with self._write() as conn:
                done = conn.execute(
                    sa.update(backends).where(backends.c.id == row_id).values(data)).rowcount
                if done == 0:
                    return None
                bump(conn)
            log.info("backend updated id=%s fields=%s", row_id, ",".join(sorted(changes)))
        return self.get(row_id)

    def toggle(self, row_id: int) -> BackendRow | None:
        """Flip `enabled` in one statement (two bridges toggling at once: both flips count);
        None when the id does not exist."""
        with self._write() as conn:
            done = conn.execute(
                sa.update(backends).where(backends.c.id == row_id)
                .values(enabled=1 - backends.c.enabled, updated_at=now_rfc3339())).rowcount
            if done == 0:
                return None
            bump(conn)
        row = self.get(row_id)
        log.info("backend toggled id=%s enabled=%s", row_id, row.enabled if row else None)
        return row

    def delete(self, row_id: int) -> bool:
        """Remove a row (its request records stay); False when the id does not exist."""
        with self._write() as conn:
            deleted = conn.execute(sa.delete(backends).where(backends.c.id == row_id)).rowcount
            if deleted:
                bump(conn)
        if deleted:
            log.info("backend deleted id=%s", row_id)
        return bool(deleted)

    # ---- API keys ---------------------------------------------------------------------------

    def create_key(self, name: str, secret: str, limits: Mapping[str, int | None]) -> ApiKey:
        """Store a new key (hashed); its name is unique (409 otherwise)."""
        data = {"name": name, "prefix": secret[:12], "key_hash": hash_key(secret),
                "created_at": now_rfc3339(),
                **{k: limits.get(k) for k in KEY_LIMITS}}
        with self._write() as conn:
            key_id = conn.execute(
                sa.insert(api_keys).values(data).returning(api_keys.c.id)).scalar_one()
            bump(conn)
        log.info("api key created id=%s name=%s", key_id, name)
        return self.get_key(key_id)  # type: ignore[return-value]

    def get_key(self, key_id: int) -> ApiKey | None:
        with self._read() as conn:
            found = self._keys(conn, key_id)
            return found[0] if found else None

    def list_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            return self._keys(conn)

    @staticmethod
    def _keys(conn: Connection, key_id: int | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.id)
        if key_id is not None:
            query = query.where(api_keys.c.id == key_id)
        return [ApiKey(**{k: r[k] for k in KEY_FIELDS}) for r in conn.execute(query).mappings()]

    def update_key(self, key_id: int, limits: Mapping[str, int | None]) -> ApiKey | None:
        """Change a key's limits (every bridge applies them from its next request); None when
        the id does not exist."""
        values = {k: limits[k] for k in KEY_LIMITS if k in limits}
        if values:
            with self._write() as conn:
                done = conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id)
                                    .values(values)).rowcount
                if done:
                    bump(conn)
        return self.get_key(key_id)

    def revoke_key(self, key_id: int) -> ApiKey | None:
        """Revoke a key (kept, so its usage stays in the comparison); None when unknown."""
        with self._write() as conn:
            done = conn.execute(
                sa.update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now_rfc3339())).rowcount
            if done:
                bump(conn)
        key = self.get_key(key_id)
        if key is not None:
            log.info("api key revoked id=%s name=%s", key_id, key.name)
        return key

    def active_keys(self) -> dict[str, ApiKey]:
        """The keys that are not revoked, by hash (from the snapshot)."""
        return {k.key_hash: k for k in self.snapshot().keys if k.revoked_at is None}

    # ---- request records and stats ----------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Append one request record."""
        self.record_many([rec])

    def record_many(self, recs: Iterable[RequestRecord]) -> int:
        """Append request records in one transaction; a record already stored (same `rid`,
        written before a failure hid the commit) is skipped. Returns how many were new."""
        rows = {r.rid: record_row(r) for r in recs}
        if not rows:
            return 0
        with self._write() as conn:
            have = set(conn.execute(
                sa.select(requests.c.rid).where(requests.c.rid.in_(list(rows)))).scalars())
            new = [row for rid, row in rows.items() if rid not in have]
            if new:
                conn.execute(sa.insert(requests), new)
        return len(new)

    def prune(self, keep: int) -> int:
        """Keep only the newest `keep` request records; returns how many were removed.

        Deletes in chunks, one transaction each, so a big backlog (a file from a version that
        kept more) never holds the write lock for long.
        """
        removed = 0
        newest = sa.select(sa.func.max(requests.c.id)).scalar_subquery()
        chunk = (sa.select(requests.c.id).where(requests.c.id <= newest - keep)
                 .order_by(requests.c.id).limit(PRUNE_CHUNK))
        while True:
            with self._write() as conn:
                n = conn.execute(sa.delete(requests).where(requests.c.id.in_(chunk))).rowcount
            removed += n
            if n < PRUNE_CHUNK:
                return removed

    def stats(self, row: BackendRow) -> BackendStats:
        """Totals and averages of the request records that this row's traffic produced."""
        with self._read(scan=True) as conn:
            return backend_stats(conn, row.model_name, row.backend_type, row.endpoint_url)

    def comparison(self, model: str | None = None,
                   since: str | None = None) -> list[dict[str, Any]]:
        """Per model, per backend and endpoint: counts, error rate, latency percentiles, speed,
        and the same per bridge that served them."""
        with self._read(scan=True) as conn:
            return comparison(conn, model_key(model) if model else None, since)

    def live(self, start: int, end: int, step: int, recent: int) -> dict[str, Any]:
        """Per-backend series in `step`-second buckets from `start` to `end` (epoch seconds) and
        the newest `recent` requests (the Admin UI's live page)."""
        since = datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="microseconds")
        since = since.replace("+00:00", "Z")  # the stored form, so text comparison orders it
        with self._read(scan=True) as conn:
            return live_view(conn, since, start, end, step, recent)

    def usage(self, since: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Totals per bridge and per API key (`{"bridges": [...], "keys": [...]}`)."""
        with self._read(scan=True) as conn:
            return {"bridges": bridge_usage(conn, since), "keys": key_usage(conn, since)}
