"""Two pytest-xdist workers (`-n 2` in pyproject.toml), and `serial` tests that need the machine.

A test marked `serial` reads the machine's load or times itself against a bound an idle CPU
keeps: it runs while the other worker runs nothing. Two flock()s shared by the run's workers:
every test holds the main lock shared and a `serial` test exclusively; the turnstile, held by a
`serial` test while it waits, keeps the other worker from slipping in test after test.

Plain hooks with no imports from the test package: conftest.py re-exports them, and
tests/test_serial_lock.py loads them into a session of its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

LOCKS_ENV = "MLX_BRIDGE_TEST_LOCKS"  # the run's lock folder, made by the controller


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller: its workers inherit the variable
        os.environ[LOCKS_ENV] = tempfile.mkdtemp(prefix="mlx-bridge-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(LOCKS_ENV, ""), ignore_errors=True)


def _run_locks(config: pytest.Config) -> tuple[Path, Path] | None:
    folder = os.environ.get(LOCKS_ENV)
    if not hasattr(config, "workerinput") or not folder:  # one process: nothing runs beside
        return None
    return Path(folder) / "turn", Path(folder) / "main"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Setup, call and teardown of one test (a module's fixtures too) under the run's lock."""
    locks = _run_locks(item.config)
    if locks is None:
        yield
        return
    serial = item.get_closest_marker("serial") is not None
    with locks[0].open("a") as turn, locks[1].open("a") as main:
        fcntl.flock(turn, fcntl.LOCK_EX)
        fcntl.flock(main, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        fcntl.flock(turn, fcntl.LOCK_UN)
        yield  # the locks go with the files' closing
