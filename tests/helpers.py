"""The one home of the tests' plain helpers: free ports, real server processes, mapping files,
polling, NDJSON. conftest.py and the *_util.py modules import from here (and re-export what older
test modules import from them); scripts/bench_common.py keeps its own copies because the scripts run
standalone, without the test package on the path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_mappings(path: Path, models: dict[str, dict], upstream: str | None = None) -> Path:
    """A model_mappings.yaml with `models` (and a default `upstream`)."""
    import yaml

    data: dict = {"models": models}
    if upstream:
        data["upstream"] = upstream
    path.write_text(yaml.safe_dump(data))
    return path


def engine_running(url: str) -> bool:
    """The server at `url` answers /health with a running engine."""
    try:
        return requests.get(url + "/health", timeout=5).json()["engine"]["state"] == "running"
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False


class DrainedOutput:
    """A server's output pipe read all along by a thread, so a chatty server never blocks on a
    full pipe (64 KiB nobody reads would stall its logging, and every request thread with it).

    Reads as the pipe did: `read()` waits for the end and returns everything, `readline()`
    waits for the next line (b"" at the end). Keeps at most MAX_BYTES (later lines dropped)."""

    MAX_BYTES = 32 << 20

    def __init__(self, pipe: IO[bytes]) -> None:
        self._lines: list[bytes] = []
        self._size, self._next, self._ended = 0, 0, False
        self._cond = threading.Condition()
        threading.Thread(target=self._drain, args=(pipe,), daemon=True).start()

    def _drain(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            with self._cond:
                if self._size + len(line) <= self.MAX_BYTES:
                    self._lines.append(line)
                    self._size += len(line)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def readline(self) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: self._next < len(self._lines) or self._ended)
            if self._next < len(self._lines):
                self._next += 1
                return self._lines[self._next - 1]
            return b""

    def read(self) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: self._ended)
            rest = b"".join(self._lines[self._next:])
            self._next = len(self._lines)
            return rest

    def close(self) -> None:
        """Nothing to close: the thread ends with the pipe."""


def start_server(args: list[str], env: dict[str, str] | None = None, port: int | None = None,
                 timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start `mlx-bridge serve` as a real process and wait until it answers."""
    port = port or free_port()
    # The engine's warm start (0.1-0.2 s a server here) is tested where it matters
    # (test_warm_start, test_unload_memory); the suite's other servers skip it for time.
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLX_BRIDGE_WARM_START": "off", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port), *args],
        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    proc.stdout = DrainedOutput(proc.stdout)  # type: ignore[assignment]
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        if engine_running(url):
            return proc, url
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("server did not start in time")


def stop_server(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM the server's process group; SIGKILL it when it outstays `timeout`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; its last verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def ndjson(lines: Iterable[bytes | str]) -> list[dict]:
    """The objects of NDJSON lines (e.g. `resp.iter_lines()`), blank lines skipped."""
    return [json.loads(line) for line in lines if line]


def finish(job: Any) -> Any:
    """An engine job's Done event (its Failed error raised), skipping the chunks before it."""
    from bridge.engine import Done, Failed

    while True:
        event = job.events.get(timeout=60)
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Done):
            return event


def tiny_app(model_dir: Path, home: Path) -> Iterator[Any]:
    """An in-process app serving `model_dir` as "tiny" (no upstream), its engine started and
    stopped around the yield: the body of a module-scoped fixture."""
    from bridge.app import create_app
    from bridge.config import load_config

    maps = write_mappings(home / "maps.yaml", {"tiny": {"mlx": str(model_dir), "backend": "mlx"}})
    application = create_app(load_config({}, mappings_path=str(maps), home=str(home),
                                         upstream="none"))
    application.extensions["bridge"].start()
    yield application
    application.extensions["bridge"].stop()
