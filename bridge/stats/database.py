"""The state database's engines and schema: which URL selects which database, the SQLite and
PostgreSQL connection pools `Store` writes and reads through, and the alembic migrations.

Knows no records and no HTTP (bridge/stats/records.py, bridge/stats/store.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from bridge.stats.schema import registry_version

READ_TIMEOUT = 0.25  # seconds a read waits for a lock: WAL readers wait only in rare cases
CONNECT_TIMEOUT = 2  # seconds to reach a PostgreSQL server
MIGRATIONS = Path(__file__).with_name("migrations")
PG_MIGRATION_LOCK = 0x6D6C7862  # advisory lock: one bridge migrates at a time ("mlxb")


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
