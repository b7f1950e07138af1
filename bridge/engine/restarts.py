"""When a crashed engine loop restarts: at most `limit` times within a window, each after a
delay that doubles with every recent crash; past that the process gives up (a fresh worker may
do better). Pure bookkeeping: the engine calls it under its lock."""

from __future__ import annotations

import time
from typing import Any

RESTART_LIMIT = 3  # restarts within RESTART_WINDOW; the next crash gives up (on_fatal)
RESTART_WINDOW = 60.0
RESTART_DELAY = 0.25  # before a restart; doubled for each earlier crash within the window


class RestartPolicy:
    """Counts crashes and says what a new one means: restart, degraded, fatal or stop."""

    def __init__(self, delay: float = RESTART_DELAY, limit: int = RESTART_LIMIT) -> None:
        self.delay, self.limit = delay, limit
        self.restarts = 0
        self.last_crash: dict[str, Any] | None = None
        self._crashes: list[float] = []  # monotonic times of recent crashes

    def crashed(self, exc: BaseException, stopping: bool, ever_ready: bool) -> str:
        """Record a crash; "stop" (stop() was called), "degraded" (MLX never came up in this
        process: a restart would fail alike), "restart" or "fatal" (crashing too often)."""
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < RESTART_WINDOW]
        self._crashes.append(now)
        self.last_crash = {"error": f"{type(exc).__name__}: {exc}", "at": time.time()}
        if stopping:
            return "stop"
        if not ever_ready and not self.restarts:
            return "degraded"
        if len(self._crashes) > self.limit:
            return "fatal"
        self.restarts += 1
        return "restart"

    def backoff(self) -> float:
        """Seconds to wait before the next restart."""
        return self.delay * 2 ** max(len(self._crashes) - 1, 0)
