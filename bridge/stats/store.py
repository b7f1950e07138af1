"""SQLite state: the per-model backend rows (admin API) and the request log (tracking).

One file, `$MLX_BRIDGE_HOME/bridge.db`, in WAL mode: every write is one transaction, so a
`kill -9` loses at most what was not yet written, never the file. Two connections, each guarded
by a lock, serve every thread: one for writes, one for reads (so a read on the request path never
queues behind a write that waits for another process's lock; WAL readers are not blocked by a
writer). Any sqlite3 failure (locked, corrupt, unreadable) becomes `StoreUnavailable` (503) with
the path in the message; the server itself keeps running. Knows no HTTP.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bridge.errors import Conflict, StoreUnavailable
from bridge.stats.live import live_view
from bridge.stats.perf import BackendStats, backend_stats, comparison
from bridge.wire.names import ModelName

log = logging.getLogger(__name__)

BACKEND_TYPES = ("mlx", "ollama", "auto")
DB_FILE = "bridge.db"
READ_TIMEOUT = 0.25  # seconds a read waits for a lock: WAL readers wait only in rare cases
# Stored field sizes of the request log, so it grows by rows, not by what a request carried:
# longer than any valid model name (host 350 + namespace 80 + model 80 + tag 80), a short error.
MAX_MODEL_CHARS = 600
MAX_ERROR_CHARS = 500
MAX_ENDPOINT_CHARS = 2048
PRUNE_CHUNK = 20_000  # request records deleted per transaction
LOCKED_RETRY = 5.0  # after an open failed on a lock, seconds before it is tried again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name TEXT NOT NULL,
    model_key TEXT NOT NULL,
    backend_type TEXT NOT NULL CHECK (backend_type IN ('mlx', 'ollama', 'auto')),
    endpoint_url TEXT,
    mlx_model TEXT,
    enabled INTEGER NOT NULL DEFAULT 1,
    priority INTEGER NOT NULL DEFAULT 0,
    max_tokens INTEGER,
    temperature_default REAL,
    timeout_seconds REAL,
    api_key_env TEXT,
    protocol TEXT,
    remote_model TEXT,
    weight REAL,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- one row per (model, backend, endpoint): a duplicate would split its stats and its failover slot
CREATE UNIQUE INDEX IF NOT EXISTS backends_unique
    ON backends (model_key, backend_type, COALESCE(endpoint_url, ''));
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    model TEXT NOT NULL,
    model_key TEXT NOT NULL,
    backend TEXT NOT NULL,
    endpoint TEXT,
    status TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    eval_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    ttft_ms REAL,
    latency_ms REAL NOT NULL,
    tokens_per_sec REAL,
    error TEXT,
    fallback_from TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_model ON requests (model_key, backend, endpoint);
CREATE INDEX IF NOT EXISTS requests_by_ts ON requests (ts);
"""
# Columns added after the first release: (table, column, type), added to older files on open.
_ADDED_COLUMNS = (("backends", "api_key_env", "TEXT"), ("backends", "protocol", "TEXT"),
                  ("backends", "remote_model", "TEXT"), ("backends", "weight", "REAL"))


def now_rfc3339() -> str:
    """Current UTC time as RFC3339 with microseconds and a Z (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def model_key(name: str) -> str:
    """Ollama's lookup key (`llama3` == `Llama3:latest`); lower-cased text if not a valid name."""
    parsed = ModelName.try_parse(name)
    return parsed.key if parsed else name.lower()


def norm_endpoint(url: str | None) -> str | None:
    """`http://h:1/` and `http://h:1` are one endpoint."""
    return url.rstrip("/") or None if url else None


@dataclass
class BackendRow:
    """One admin-managed backend for a model; an enabled row overrides the mapping file."""

    id: int
    model_name: str
    backend_type: str  # "mlx" | "ollama" | "auto"
    endpoint_url: str | None
    mlx_model: str | None
    enabled: bool
    priority: int  # higher is tried first
    max_tokens: int | None
    temperature_default: float | None
    timeout_seconds: float | None
    api_key_env: str | None  # the environment variable with the endpoint's key (never the key)
    protocol: str | None  # a remote endpoint's: "ollama" | "openai"; None = by backend_type
    remote_model: str | None  # the name the remote endpoint knows the model by
    weight: float | None  # share of traffic among enabled rows of equal priority (None = 1)
    description: str
    created_at: str  # RFC3339 UTC
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROW_FIELDS = tuple(f.name for f in fields(BackendRow))
READ_ONLY = ("id", "created_at", "updated_at")
WRITABLE = tuple(f for f in ROW_FIELDS if f not in READ_ONLY)


@dataclass
class RequestRecord:
    """One finished request, as the tracker stores it.

    `backend` is who answered ("mlx" or "ollama"); `endpoint` the upstream URL it went to
    (None for MLX); `status` "ok" | "error" | "canceled"; `cached_tokens` the prompt tokens
    served from the prompt cache.
    """

    model: str
    backend: str
    endpoint: str | None
    status: str
    prompt_tokens: int
    eval_tokens: int
    ttft_ms: float | None
    latency_ms: float
    tokens_per_sec: float | None
    error: str | None = None
    fallback_from: str | None = None
    ts: str = field(default_factory=now_rfc3339)
    cached_tokens: int = 0


class Store:
    """Backend rows and request records in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path, *, timeout: float = 2.0) -> None:
        """Open (or create) the database and its schema; a broken file is reported, not raised."""
        self.path = Path(path)
        self.timeout = timeout  # how long a write waits for another process's lock
        self._lock = threading.RLock()  # the write connection
        self._read_lock = threading.RLock()  # the read connection
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._locked: tuple[float, StoreUnavailable] | None = None  # (retry at, error) after a lock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection()
        except StoreUnavailable as exc:  # keep serving: the router falls back to the mappings
            log.error("state database unavailable path=%s error=%r", self.path, exc.message)

    # ---- connection -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The write connection (under self._lock), opened on first use, re-tried after a
        failure."""
        if self._conn is None:
            self._conn = self._open(self.timeout, schema=True)
        return self._conn

    def _read_connection(self) -> sqlite3.Connection:
        """The read connection (under self._read_lock); the schema is made first."""
        if self._reader is None:
            if self._conn is None:
                with self._lock:
                    self._connection()
            self._reader = self._open(min(self.timeout, READ_TIMEOUT), schema=False)
        return self._reader

    def _open(self, timeout: float, schema: bool) -> sqlite3.Connection:
        locked = self._locked
        if locked is not None and time.monotonic() < locked[0]:
            # a lock just timed out: fail at once instead of waiting on every request
            raise locked[1]
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            if schema:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: durable across a process crash
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                _add_columns(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            error = self._unavailable(exc)
            if "locked" in str(exc):
                self._locked = (time.monotonic() + LOCKED_RETRY, error)
            raise error from None
        self._locked = None
        return conn

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        hint = ""
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
            hint = "; move the file aside to start with an empty one"
        elif "locked" in str(exc):
            hint = "; another process holds a lock on it, retry"
        return StoreUnavailable(f"backend store {self.path} unavailable: {exc}{hint}")

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection under its lock; a write runs in one IMMEDIATE transaction."""
        with self._lock if write else self._read_lock:
            try:
                if not write:
                    yield self._read_connection()
                    return
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a backend with the same model_name, backend_type and "
                               f"endpoint_url already exists ({exc})") from None
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None

    @contextmanager
    def _report_db(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for a full scan (stats, comparisons), closed afterwards.

        Not the shared read connection: routing reads the backend rows on every request through
        that one, and must never queue behind a scan of the whole request log.
        """
        if self._conn is None:
            with self._lock:
                self._connection()
        conn = self._open(min(self.timeout, READ_TIMEOUT), schema=False)
        try:
            yield conn
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- backend rows -----------------------------------------------------------------------

    def rows_for_model(self, model_name: str) -> list[BackendRow]:
        """ENABLED rows for a model (Ollama name rules), highest priority first, then by id.

        An invalid name gives []; a locked or corrupt database raises StoreUnavailable (503).
        """
        parsed = ModelName.try_parse(model_name)
        if parsed is None:
            return []
        key = parsed.key
        with self._db() as conn:
            cur = conn.execute("SELECT * FROM backends WHERE model_key = ? AND enabled = 1 "
                               "ORDER BY priority DESC, id", (key,))
            return [_row(r) for r in cur]

    def list_rows(self, enabled_only: bool = False) -> list[BackendRow]:
        """Every row (or only enabled ones) by model name, then priority (high first), then id."""
        where = "WHERE enabled = 1" if enabled_only else ""
        with self._db() as conn:
            cur = conn.execute(f"SELECT * FROM backends {where} "
                               "ORDER BY model_key, priority DESC, id")
            return [_row(r) for r in cur]

    def get(self, row_id: int) -> BackendRow | None:
        with self._db() as conn:
            r = conn.execute("SELECT * FROM backends WHERE id = ?", (row_id,)).fetchone()
            return _row(r) if r else None

    def create(self, values: Mapping[str, Any]) -> BackendRow:
        """Insert a row from validated values (`model_name` and `backend_type` required)."""
        data = {"enabled": True, "priority": 0, "description": "", **_writable(values)}
        data["endpoint_url"] = norm_endpoint(data.get("endpoint_url"))
        data["model_key"] = model_key(data["model_name"])
        data["created_at"] = data["updated_at"] = now_rfc3339()
        cols = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        with self._db(write=True) as conn:
            cur = conn.execute(f"INSERT INTO backends ({cols}) VALUES ({marks})",
                               tuple(data.values()))
            row_id = cur.lastrowid
        log.info("backend created id=%s model=%s backend=%s endpoint=%s", row_id,
                 data["model_name"], data["backend_type"], data["endpoint_url"])
        return self.get(row_id)  # type: ignore[arg-type, return-value]

    def update(self, row_id: int, changes: Mapping[str, Any]) -> BackendRow | None:
        """Apply a partial update of writable fields; None when the id does not exist."""
        data = _writable(changes)
        if "endpoint_url" in data:
            data["endpoint_url"] = norm_endpoint(data["endpoint_url"])
        if "model_name" in data:
            data["model_key"] = model_key(data["model_name"])
        if data:
            data["updated_at"] = now_rfc3339()
            sets = ", ".join(f"{col} = ?" for col in data)
            with self._db(write=True) as conn:
                cur = conn.execute(f"UPDATE backends SET {sets} WHERE id = ?",
                                   (*data.values(), row_id))
                if cur.rowcount == 0:
                    return None
            log.info("backend updated id=%s fields=%s", row_id, ",".join(sorted(changes)))
        return self.get(row_id)

    def toggle(self, row_id: int) -> BackendRow | None:
        """Flip `enabled`; None when the id does not exist."""
        with self._db(write=True) as conn:
            cur = conn.execute(
                "UPDATE backends SET enabled = 1 - enabled, updated_at = ? WHERE id = ?",
                (now_rfc3339(), row_id))
            if cur.rowcount == 0:
                return None
        row = self.get(row_id)
        log.info("backend toggled id=%s enabled=%s", row_id, row.enabled if row else None)
        return row

    def delete(self, row_id: int) -> bool:
        """Remove a row (its request records stay); False when the id does not exist."""
        with self._db(write=True) as conn:
            deleted = conn.execute("DELETE FROM backends WHERE id = ?", (row_id,)).rowcount > 0
        if deleted:
            log.info("backend deleted id=%s", row_id)
        return deleted

    # ---- request records and stats ----------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Append one request record."""
        self.record_many([rec])

    def record_many(self, recs: Iterable[RequestRecord]) -> None:
        """Append request records in one transaction."""
        rows = [(r.ts, _clip(r.model, MAX_MODEL_CHARS), _clip(model_key(r.model), MAX_MODEL_CHARS),
                 r.backend, _clip(norm_endpoint(r.endpoint), MAX_ENDPOINT_CHARS), r.status,
                 r.prompt_tokens, r.eval_tokens, r.cached_tokens, r.ttft_ms, r.latency_ms,
                 r.tokens_per_sec, _clip(r.error, MAX_ERROR_CHARS), r.fallback_from) for r in recs]
        with self._db(write=True) as conn:
            conn.executemany(
                "INSERT INTO requests (ts, model, model_key, backend, endpoint, status, "
                "prompt_tokens, eval_tokens, cached_tokens, ttft_ms, latency_ms, tokens_per_sec, "
                "error, fallback_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def prune(self, keep: int) -> int:
        """Keep only the newest `keep` request records; returns how many were removed.

        Deletes in chunks, one transaction each, so a big backlog (a file from a version that
        kept more) never holds the write lock for long.
        """
        removed = 0
        while True:
            with self._db(write=True) as conn:
                n = conn.execute(
                    "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE id <= "
                    "(SELECT MAX(id) FROM requests) - ? ORDER BY id LIMIT ?)",
                    (keep, PRUNE_CHUNK)).rowcount
            removed += n
            if n < PRUNE_CHUNK:
                return removed

    def stats(self, row: BackendRow) -> BackendStats:
        """Totals and averages of the request records that this row's traffic produced."""
        with self._report_db() as conn:
            return backend_stats(conn, row.model_name, row.backend_type, row.endpoint_url)

    def comparison(self, model: str | None = None,
                   since: str | None = None) -> list[dict[str, Any]]:
        """Per model, per backend and endpoint: counts, error rate, latency percentiles, speed."""
        with self._report_db() as conn:
            return comparison(conn, model_key(model) if model else None, since)

    def live(self, start: int, end: int, step: int, recent: int) -> dict[str, Any]:
        """Per-backend series in `step`-second buckets from `start` to `end` (epoch seconds) and
        the newest `recent` requests (the Admin UI's live page)."""
        since = datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="microseconds")
        since = since.replace("+00:00", "Z")  # the stored form, so text comparison orders it
        with self._report_db() as conn:
            return live_view(conn, since, start, end, step, recent)


def _clip(text: str | None, limit: int) -> str | None:
    """At most `limit` characters (an ellipsis marks a cut)."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "\u2026"


def _add_columns(conn: sqlite3.Connection) -> None:
    """Bring a file made by an older version up to the current schema (idempotent)."""
    for table, column, kind in _ADDED_COLUMNS:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it just now
                if "duplicate column" not in str(exc):
                    raise


def _writable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Only writable columns reach SQL (column names are never taken from a request)."""
    return {k: values[k] for k in WRITABLE if k in values}


def _row(r: sqlite3.Row) -> BackendRow:
    data = {k: r[k] for k in ROW_FIELDS}
    data["enabled"] = bool(data["enabled"])
    return BackendRow(**data)
