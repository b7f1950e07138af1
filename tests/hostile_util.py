"""Timing normal requests beside a hostile one: the check every test_hostile_* module makes.

`beside` runs the attack in a thread and, while it runs, times `/api/version` and a short
`/api/chat` on the tiny text model (and samples the server's memory), so a test asserts both that
the attack got a clear answer and that nobody else waited for it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

# Bounds that hold on a loaded 2-core machine: a normal request beside an attack.
VERSION_BOUND = 2.0
CHAT_BOUND = 3.0


@dataclass
class Beside:
    result: Any  # what the attack returned (or the exception it raised)
    seconds: float  # how long the attack took
    version: list[float] = field(default_factory=list)
    chat: list[float] = field(default_factory=list)
    peak_rss: int = 0  # bytes, the server's whole process tree

    def assert_unhurt(self) -> None:
        assert self.version and self.chat, "no probe ran beside the attack"
        assert max(self.version) < VERSION_BOUND, self.version
        assert max(self.chat) < CHAT_BOUND, self.chat

    def row(self) -> str:
        load = os.getloadavg()[0]
        return (f"attack {self.seconds:.2f} s; /api/version max {max(self.version):.3f} s, "
                f"chat max {max(self.chat):.3f} s ({len(self.chat)} probes); "
                f"peak rss {self.peak_rss >> 20} MiB; load {load:.1f}")


def keep_reading(proc: subprocess.Popen, log: Path) -> None:
    """Copy a started server's output to `log` in a thread: the tests' servers write to a pipe,
    and a pipe nobody reads fills after 64 KiB of log lines, which then blocks the server's
    logging (every request thread with it) -- the attacks log a lot."""
    def copy() -> None:
        with log.open("wb") as out:
            for line in iter(proc.stdout.readline, b""):
                out.write(line)
    threading.Thread(target=copy, daemon=True).start()


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):  # a thread's process may be gone by now
            total += p.memory_info().rss
    return total


def short_chat(url: str, model: str) -> float:
    start = time.perf_counter()
    resp = requests.post(url + "/api/chat", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"num_predict": 2, "temperature": 0}})
    assert resp.status_code == 200, resp.text
    return time.perf_counter() - start


def version(url: str) -> float:
    start = time.perf_counter()
    assert requests.get(url + "/api/version", timeout=30).status_code == 200
    return time.perf_counter() - start


def beside(url: str, model: str, attack: Callable[[], Any], pid: int | None = None,
           min_probes: int = 2) -> Beside:
    """Run `attack` in a thread; time normal requests until it is over (at least `min_probes`)."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.perf_counter()
        try:
            box["result"] = attack()
        except Exception as exc:  # noqa: BLE001 - handed to the test to assert on
            box["result"] = exc
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out = Beside(None, 0.0)
    time.sleep(0.2)  # let the attack reach the server first
    while thread.is_alive() or len(out.chat) < min_probes:
        out.version.append(version(url))
        out.chat.append(short_chat(url, model))
        if pid is not None:
            out.peak_rss = max(out.peak_rss, tree_rss(pid))
        time.sleep(0.05)
    thread.join()
    out.result, out.seconds = box["result"], box["seconds"]
    return out
