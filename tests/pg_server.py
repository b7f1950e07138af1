"""A real PostgreSQL server for the registry tests, from the machine's Debian binaries.

pytest-postgresql's process fixture runs `initdb` as the current user, which PostgreSQL refuses
when that is root (as in CI containers); so the server is started here, as the `postgres` user
when running as root (`runuser`), and pytest-postgresql's `DatabaseJanitor` makes each test
module's database. The server can be killed (`pg_ctl stop -m immediate`, no shutdown) and started
again on the same data directory and port, for the outage tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgServer:
    """One PostgreSQL cluster in a temporary directory on 127.0.0.1:`port` (trust auth)."""

    def __init__(self) -> None:
        bindir = _bin_dir()
        if bindir is None:
            pytest.skip("PostgreSQL binaries not found (Debian: apt-get install postgresql)")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mlxb-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb refuses root: run the server as `postgres`
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user for initdb")
            self.user = "postgres"
            os.chmod(self.root, 0o755)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")

    def kill(self) -> None:
        """Stop at once, as a crash would (no checkpoint; clients see their connections die)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def database(self, dbname: str) -> Iterator[str]:
        """A fresh database for one test module; its URL."""
        from pytest_postgresql.janitor import DatabaseJanitor

        janitor = DatabaseJanitor(user="postgres", host="127.0.0.1", port=self.port,
                                  dbname=dbname, version=15)
        janitor.init()
        try:
            yield self.url(dbname)
        finally:
            with contextlib.suppress(Exception):  # the server may be down after an outage test
                janitor.drop()


def query(url: str, sql: str, *args: object) -> list[tuple]:
    """Run one statement on the database directly (psycopg), the test's own view of it."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []
