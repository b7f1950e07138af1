"""Fault injection for a real `mlx-bridge serve` process (tests/test_engine_recovery.py).

Put this directory first on PYTHONPATH and set BRIDGE_TEST_FAULTS to an empty directory; the
server then reads files there (written by the test while it runs):

- `crash`: a number N. The engine loop's keep_alive step (Engine._expire, run once per loop
  iteration) raises RuntimeError("injected engine fault") N more times: a crash outside any
  job, like a failing unload.
- `hold`: while it exists, a restarted engine thread waits before warming up, so the test can
  look at the server while its MLX engine is down.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_DIR = os.environ.get("BRIDGE_TEST_FAULTS")


def _take_crash(directory: Path) -> bool:
    """Consume one of the `crash` file's N faults; True when one was taken."""
    path = directory / "crash"
    try:
        left = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if left <= 0:
        return False
    path.write_text(str(left - 1))
    return True


def _install(directory: Path) -> None:
    from bridge.engine import core

    expire = core.Engine._expire
    warm_up = core.Engine._warm_up

    def faulty_expire(self: core.Engine) -> None:
        if _take_crash(directory):
            raise RuntimeError("injected engine fault")
        expire(self)

    def held_warm_up(self: core.Engine) -> bool:
        while self.restart_policy.restarts and (directory / "hold").exists():
            time.sleep(0.05)
        return warm_up(self)

    core.Engine._expire = faulty_expire  # type: ignore[method-assign]
    core.Engine._warm_up = held_warm_up  # type: ignore[method-assign]


if _DIR:
    _install(Path(_DIR))
