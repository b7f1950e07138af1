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
are in bridge/stats/records.py, its engines and migrations in bridge/stats/database.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.errors import Conflict, StoreUnavailable, Unprocessable
from bridge.stats.database import bump, database_url, migrate, open_engines
from bridge.stats.live import live_view
from bridge.stats.perf import BackendStats, backend_stats, bridge_usage, comparison, key_usage
from bridge.stats.records import (
    BACKEND_TYPES,
    KEY_FIELDS,
    KEY_LIMITS,
    MAX_ERROR_CHARS,
    MAX_MODEL_CHARS,
    READ_ONLY,
    ROW_FIELDS,
    WRITABLE,
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

# Re-exported: callers import the records and the schema helpers from here as before.
__all__ = [
    "BACKEND_TYPES", "DB_FILE", "KEY_LIMITS", "MAX_ERROR_CHARS", "MAX_MODEL_CHARS", "READ_ONLY",
    "ROW_FIELDS", "WRITABLE", "ApiKey", "BackendRow", "RequestRecord", "Snapshot", "Store",
    "hash_key", "model_key", "norm_endpoint", "now_rfc3339", "schema_revision",
]

log = logging.getLogger(__name__)

DB_FILE = "bridge.db"
PRUNE_CHUNK = 20_000  # request records deleted per transaction
LOCKED_RETRY = 5.0  # after an open failed on a lock, seconds before it is tried again
OUTAGE_RETRY = 1.0  # while the database is down, routing asks it at most once a second
COPY_CHUNK = 5_000  # request records per transaction when copying a database


class Store:
    """Backend rows, API keys and request records; safe to share between threads."""

    def __init__(self, target: str | Path, *, timeout: float = 2.0) -> None:
        """Open (or create) the database and migrate it; a broken one is reported, not raised."""
        self.url = sa.engine.make_url(database_url(target))
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.path: Path | None = Path(self.url.database or "") if self.sqlite else None
        self.timeout = timeout  # how long a write waits for another process's lock
        self.name = str(self.path) if self.path else self.url.render_as_string(hide_password=True)
        self._lock = threading.RLock()  # SQLite: one writer connection per process
        self._migrated = False
        self._locked: tuple[float, StoreUnavailable] | None = None  # (retry at, error)
        self._snapshot: Snapshot | None = None
        self._retry_at = 0.0  # while down: when routing asks the database again
        self._down_error: StoreUnavailable | None = None  # the last failure, before any snapshot
        self._down_logged = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer, self._reader, self._scanner = open_engines(self.url, self.sqlite,
                                                                 self.timeout)
        try:
            self._ready()
        except StoreUnavailable as exc:  # keep serving: the router falls back to the mappings
            log.error("state database unavailable database=%s error=%r", self.name, exc.message)

    # ---- engines and connections ------------------------------------------------------------


    def _ready(self) -> None:
        """Run the migrations once (retried on every use until they succeed)."""
        if self._migrated:
            return
        locked = self._locked
        if locked is not None and time.monotonic() < locked[0]:
            raise locked[1]  # a lock just timed out: fail at once instead of waiting each time
        with self._lock:
            if self._migrated:
                return
            try:
                migrate(self._writer)
            except sa.exc.SQLAlchemyError as exc:
                error = self._unavailable(exc)
                if "locked" in str(error.message):
                    self._locked = (time.monotonic() + LOCKED_RETRY, error)
                self._reset()
                raise error from None
            self._locked = None
            self._migrated = True

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        hint = ""
        if "not a database" in text:
            hint = "; move the file aside to start with an empty one"
        elif "locked" in text:
            hint = "; another process holds a lock on it, retry"
        return StoreUnavailable(f"backend store {self.name} unavailable: {text}{hint}")

    def _error(self, exc: sa.exc.SQLAlchemyError) -> Exception:
        """A database error as the bridge's: a duplicate is 409, a value the database cannot
        hold 422, anything else (locked, corrupt, unreachable) 503."""
        if isinstance(exc, sa.exc.IntegrityError):
            return Conflict(f"a row with the same unique fields already exists ({exc.orig})")
        if isinstance(exc, sa.exc.DataError) or (
                isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)):
            return Unprocessable(f"value not storable: {getattr(exc, 'orig', None) or exc}")
        self._reset()
        return self._unavailable(exc)

    def _reset(self) -> None:
        """Drop pooled connections after a failure: a replaced or restarted database is opened
        afresh on the next use."""
        for engine in {self._writer, self._reader, self._scanner}:
            engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One transaction (SQLite: BEGIN IMMEDIATE, one writer per process)."""
        self._ready()
        with self._lock if self.sqlite else contextlib.nullcontext():
            try:
                with self._writer.begin() as conn:
                    yield conn
            except sa.exc.SQLAlchemyError as exc:
                raise self._error(exc) from None

    @contextmanager
    def _read(self, scan: bool = False) -> Iterator[Connection]:
        """A connection for reads; `scan` for a full pass over the request log (stats,
        comparisons), which must never hold up the reads routing makes on every request."""
        self._ready()
        try:
            with (self._scanner if scan else self._reader).connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        """Close every pooled connection (reopened on demand if the store is used again)."""
        self._reset()

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

    # ---- copying a database (SQLite -> PostgreSQL) ------------------------------------------

    def copy_from(self, source: Store) -> dict[str, int]:
        """Copy every backend row, key and request record of `source` into this database.

        Safe to run again: rows already here (same model, backend and endpoint; same key hash)
        are kept as they are, and each request record gets a `rid` derived from the source and
        its id, so a second copy adds nothing. Returns the counts copied.
        """
        counts = {"backends": 0, "api_keys": 0, "requests": 0}
        with source._read(scan=True) as src:
            src_rows = [dict(r) for r in src.execute(sa.select(backends)).mappings()]
            src_keys = [dict(r) for r in src.execute(sa.select(api_keys)).mappings()]
        with self._write() as conn:
            have = {(r.model_key, r.backend_type, r.endpoint_url or "")
                    for r in conn.execute(sa.select(backends))}
            for row in src_rows:
                if (row["model_key"], row["backend_type"], row["endpoint_url"] or "") not in have:
                    conn.execute(sa.insert(backends).values(
                        {k: v for k, v in row.items() if k != "id"}))
                    counts["backends"] += 1
            hashes = set(conn.execute(sa.select(api_keys.c.key_hash)).scalars())
            for key in src_keys:
                if key["key_hash"] not in hashes:
                    conn.execute(sa.insert(api_keys).values(
                        {k: v for k, v in key.items() if k != "id"}))
                    counts["api_keys"] += 1
            bump(conn)
        tag = hashlib.sha256(source.name.encode()).hexdigest()[:12]
        after = 0
        while True:
            with source._read(scan=True) as src:
                chunk = [dict(r) for r in src.execute(
                    sa.select(requests).where(requests.c.id > after).order_by(requests.c.id)
                    .limit(COPY_CHUNK)).mappings()]
            if not chunk:
                return counts
            after = chunk[-1]["id"]
            for r in chunk:
                r["rid"] = r.get("rid") or f"copy-{tag}-{r['id']}"
                del r["id"]
            with self._write() as conn:
                have_rids = set(conn.execute(sa.select(requests.c.rid).where(
                    requests.c.rid.in_([r["rid"] for r in chunk]))).scalars())
                new = [r for r in chunk if r["rid"] not in have_rids]
                if new:
                    conn.execute(sa.insert(requests), new)
            counts["requests"] += len(new)


def schema_revision(store: Store) -> str | None:
    """The alembic revision the database is at (None before the first migration)."""
    with store._read() as conn:
        table = sa.table("alembic_version", sa.column("version_num"))
        return conn.execute(sa.select(table.c.version_num)).scalar()

