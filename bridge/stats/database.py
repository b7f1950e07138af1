"""The state database's engines and schema: which URL selects which database, the SQLite and
PostgreSQL connection pools `Store` writes and reads through (`Database`: migrated once, one
transaction per write, failures as the bridge's errors), and the alembic migrations.

Knows no records and no HTTP (bridge/stats/records.py, bridge/stats/store.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from bridge.errors import Conflict, StoreUnavailable, Unprocessable
from bridge.stats.schema import registry_version

READ_TIMEOUT = 0.25  # seconds a read waits for a lock: WAL readers wait only in rare cases
CONNECT_TIMEOUT = 2  # seconds to reach a PostgreSQL server
MIGRATIONS = Path(__file__).with_name("migrations")
PG_MIGRATION_LOCK = 0x6D6C7862  # advisory lock: one bridge migrates at a time ("mlxb")
LOCKED_RETRY = 5.0  # after an open failed on a lock, seconds before it is tried again


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL: a path is a SQLite file; `postgresql://` selects psycopg 3."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    if text.startswith(("postgresql+psycopg://", "sqlite://")):
        return text
    if "://" in text:  # a typo must not quietly give this bridge a registry of its own
        raise ValueError(f"unsupported database URL scheme {text.split('://', 1)[0]!r}: "
                         "MLX_BRIDGE_DATABASE_URL takes postgresql://user:password@host/db")
    return f"sqlite:///{Path(text)}"


def open_engines(url: sa.URL, sqlite: bool, timeout: float) -> tuple[Engine, Engine, Engine]:
    """(writes, request-path reads, full scans). PostgreSQL: one pool serves all three."""
    if not sqlite:
        engine = sa.create_engine(
            # at most 12 connections per bridge: a fleet stays under max_connections (100)
            url, pool_size=4, max_overflow=8, pool_timeout=CONNECT_TIMEOUT,
            pool_pre_ping=True,  # a connection from before a database restart is replaced
            connect_args={"connect_timeout": CONNECT_TIMEOUT})
        return engine, engine, engine
    writer = sqlite_engine(url, timeout, write=True, pool_size=1)
    reader = sqlite_engine(url, min(timeout, READ_TIMEOUT), write=False, pool_size=4)
    scanner = sqlite_engine(url, min(timeout, READ_TIMEOUT), write=False, pool_size=0)
    return writer, reader, scanner


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (alembic `upgrade head`), one process at a time."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two bridges starting at once: one migrates
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_MIGRATION_LOCK)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def sqlite_engine(url: sa.URL, timeout: float, *, write: bool, pool_size: int) -> Engine:
    """A SQLite engine. Writes: BEGIN IMMEDIATE (the write lock up front, so a transaction that
    reads first never fails half-way on another process's commit); reads: autocommit. A
    pool_size of 0: no pooling (a scan's connection is closed after it)."""
    pool: dict[str, Any] = ({"poolclass": NullPool} if pool_size == 0 else
                            {"pool_size": pool_size, "max_overflow": 8 if not write else 0})
    engine = sa.create_engine(url, connect_args={"timeout": timeout,
                                                 "check_same_thread": False}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver starts no transaction of its own
        if write:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives a crash

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def bump(conn: Connection) -> None:
    """Move the registry counter (in the writing transaction): every bridge reloads."""
    conn.execute(sa.update(registry_version).where(registry_version.c.id == 1)
                 .values(version=registry_version.c.version + 1))


class Database:
    """The state database's connections: migrated on first use, writes one transaction at a
    time, reads that never queue behind a write or a scan; safe to share between threads."""

    def __init__(self, target: str | Path, *, timeout: float = 2.0) -> None:
        """Open (or create) the engines; the migrations run on first use (`_ready`)."""
        self.url = sa.engine.make_url(database_url(target))
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.path: Path | None = Path(self.url.database or "") if self.sqlite else None
        self.timeout = timeout  # how long a write waits for another process's lock
        self.name = str(self.path) if self.path else self.url.render_as_string(hide_password=True)
        self._lock = threading.RLock()  # SQLite: one writer connection per process
        self._migrated = False
        self._locked: tuple[float, StoreUnavailable] | None = None  # (retry at, error)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer, self._reader, self._scanner = open_engines(self.url, self.sqlite,
                                                                 self.timeout)

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


def schema_revision(db: Database) -> str | None:
    """The alembic revision the database is at (None before the first migration)."""
    with db._read() as conn:
        table = sa.table("alembic_version", sa.column("version_num"))
        return conn.execute(sa.select(table.c.version_num)).scalar()
