"""The state database under faults, with real server processes: a corrupt file, a lock held by
another process (before or after the start), and kill -9 while admin writes are in flight.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from bridge.stats.store import DB_FILE

from .conftest import start_server, stop_server, write_mappings
from .fault_util import (
    assert_serves,
    generate,
)

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _server(tmp_path: Path, model_dir: Path, **env: str):
    mappings = write_mappings(tmp_path / "m.yaml", {"good": {"mlx": str(model_dir)}})
    return start_server(["--mappings", str(mappings), "--home", str(tmp_path / "home"),
                         "--upstream", "none"],
                        env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN, **env})


def test_corrupt_database_admin_answers_503_and_serving_uses_the_mapping(tmp_path, tiny_model_dir):
    proc, url = _server(tmp_path, tiny_model_dir)
    try:  # a row that would cap replies at 1 token, while the database is healthy
        row = requests.post(url + "/api/llm-backends", headers=AUTH, timeout=10,
                            json={"model_name": "good", "backend_type": "mlx", "max_tokens": 1})
        assert row.status_code == 201
        assert generate(url, "good", num_predict=None).json()["eval_count"] == 1
    finally:
        stop_server(proc)
    db = tmp_path / "home" / DB_FILE
    db.write_bytes(b"garbage!" * 4096)
    proc, url = _server(tmp_path, tiny_model_dir)
    try:
        reply = generate(url, "good", num_predict=6)
        assert reply.status_code == 200 and reply.json()["eval_count"] == 6  # the mapping serves
        for r in (requests.get(url + "/api/llm-backends", headers=AUTH, timeout=10),
                  requests.post(url + "/api/llm-backends", headers=AUTH, timeout=10,
                                json={"model_name": "x", "backend_type": "mlx"})):
            assert r.status_code == 503 and str(db) in r.json()["error"]
            assert ("not a database" in r.json()["error"]
                    and "move the file aside" in r.json()["error"])
        assert requests.get(url + "/health", timeout=10).json()["status"] == "ok"
    finally:
        stop_server(proc)
        out = proc.stdout.read().decode() if proc.stdout else ""
    assert "state database unavailable" in out and "Traceback" not in out


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
if sys.argv[2] == "exclusive":  # nobody else may even read
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("CREATE TABLE IF NOT EXISTS holder (x)")
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(db: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(db), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _release(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()


def _admin_write(url: str) -> requests.Response:
    return requests.post(url + "/api/llm-backends", headers=AUTH, timeout=30,
                         json={"model_name": f"m{time.monotonic_ns()}", "backend_type": "mlx"})


def test_database_write_locked_by_another_process(tmp_path, tiny_model_dir):
    proc, url = _server(tmp_path, tiny_model_dir)
    holder = None
    try:
        assert_serves(url)
        holder = _hold_lock(tmp_path / "home" / DB_FILE, "write")
        started = time.monotonic()
        for _ in range(5):
            assert_serves(url)  # reads are not blocked in WAL mode; records just are not stored
        assert time.monotonic() - started < 5, "serving must not wait on the database lock"
        assert requests.get(url + "/api/llm-backends", headers=AUTH, timeout=10).status_code == 200
        locked = _admin_write(url)
        assert locked.status_code == 503 and "database is locked" in locked.json()["error"]
        _release(holder)
        holder = None
        assert _admin_write(url).status_code == 201
    finally:
        if holder:
            _release(holder)
        stop_server(proc)


def test_database_exclusively_locked_before_start(tmp_path, tiny_model_dir):
    (tmp_path / "home").mkdir()
    holder = _hold_lock(tmp_path / "home" / DB_FILE, "exclusive")
    proc = None
    try:
        proc, url = _server(tmp_path, tiny_model_dir)
        started = time.monotonic()
        for _ in range(3):
            assert_serves(url)  # from the mapping file
        assert time.monotonic() - started < 6, "requests must not each wait for the lock"
        r = requests.get(url + "/api/llm-backends", headers=AUTH, timeout=10)
        assert r.status_code == 503 and "locked" in r.json()["error"]
        _release(holder)
        deadline = time.monotonic() + 15
        while (status := _admin_write(url).status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 201, "the store recovers without a restart"
    finally:
        _release(holder)
        if proc:
            stop_server(proc)


# ---- kill -9 while admin writes are in flight -----------------------------------------------


class AdminHammer:
    """Client threads creating, updating, toggling and deleting rows; remembers what was
    acknowledged."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.acked: dict[int, dict | None] = {}  # id -> {priority, enabled}, None once deleted
        self.unsure: set[int] = set()  # the row an operation was on when the server died
        self.unsure_creates: list[str] = []
        self.ops = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(t,),
                                          daemon=True) for t in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join(30)

    def _ack(self, row_id: int, state: dict | None) -> None:
        with self._lock:
            self.acked[row_id] = state
            self.ops += 1

    def _work(self, t: int) -> None:
        base = f"{self.url}/api/llm-backends"
        i, row_id = 0, None
        try:
            while True:
                name, row_id = f"k{t}-{i}", None
                with self._lock:
                    self.unsure_creates.append(name)
                r = requests.post(base, headers=AUTH, timeout=10, json={
                    "model_name": name, "backend_type": "ollama", "endpoint_url": f"http://127.0.0.1:9/{t}",
                    "priority": i})
                assert r.status_code == 201, r.text
                row_id = r.json()["id"]
                with self._lock:
                    self.unsure_creates.remove(name)
                self._ack(row_id, {"priority": i, "enabled": True})
                assert requests.put(f"{base}/{row_id}", headers=AUTH, timeout=10,
                                    json={"priority": i + 1000}).status_code == 200
                self._ack(row_id, {"priority": i + 1000, "enabled": True})
                assert requests.post(f"{base}/{row_id}/toggle", headers=AUTH,
                                     timeout=10).status_code == 200
                self._ack(row_id, {"priority": i + 1000, "enabled": False})
                if i % 2:
                    assert requests.delete(f"{base}/{row_id}", headers=AUTH,
                                           timeout=10).status_code == 204
                    self._ack(row_id, None)
                i += 1
        except requests.RequestException:  # the server died under this operation
            if row_id is not None:
                with self._lock:
                    self.unsure.add(row_id)


def _db_rows(db: Path) -> tuple[str, dict[int, dict], int]:
    conn = sqlite3.connect(db)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = {r[0]: {"name": r[1], "priority": r[2], "enabled": bool(r[3])}
                for r in conn.execute("SELECT id, model_name, priority, enabled FROM backends")}
        records = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    finally:
        conn.close()
    return check, rows, records


def test_kill_9_during_admin_writes_leaves_the_database_intact(tmp_path, tiny_model_dir):
    proc, url = _server(tmp_path, tiny_model_dir)
    hammer = AdminHammer(url)
    stop_gen = threading.Event()

    def traffic() -> None:  # request records written by the tracker at the same time
        while not stop_gen.is_set():
            try:
                generate(url, "good", num_predict=2)
            except requests.RequestException:
                return

    gen = threading.Thread(target=traffic, daemon=True)
    try:
        assert_serves(url)  # the model is loaded: records are being written during the kill
        gen.start()
        hammer.start()
        deadline = time.monotonic() + 60
        while hammer.ops < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_gen.set()
        stop_server(proc)
    hammer.join()
    gen.join(30)
    assert hammer.ops >= 60

    check, rows, records = _db_rows(tmp_path / "home" / DB_FILE)
    assert check == "ok"
    assert records > 0
    for row_id, state in hammer.acked.items():
        if row_id in hammer.unsure:
            continue
        if state is None:
            assert row_id not in rows, f"acknowledged delete of {row_id} lost"
        else:
            got = rows[row_id]
            assert (got["priority"], got["enabled"]) == (state["priority"],
                                                         state["enabled"]), row_id
    unknown = [r["name"].removesuffix(":latest") for i, r in rows.items() if i not in hammer.acked]
    # only creates cut by the kill
    assert all(name in hammer.unsure_creates for name in unknown), unknown

    proc, url = _server(tmp_path, tiny_model_dir)
    try:
        listed = requests.get(url + "/api/llm-backends", headers=AUTH, timeout=10).json()
        assert sorted(r["id"] for r in listed) == sorted(rows)
        assert _admin_write(url).status_code == 201
        assert_serves(url)
    finally:
        stop_server(proc)
