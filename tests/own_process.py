"""`@pytest.mark.own_process`: the test runs in a pytest process of its own.

For a test that changes or reads what is the whole process's (OpenBLAS's thread count, glibc's
allocator thresholds, class attributes every engine reads): engines other modules started in a
worker keep running beside it, so its result would hang on the modules that ran before it. The
test's own fixtures are set up in both processes; its body runs only in the inner one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

INNER_ENV = "MLX_BRIDGE_TEST_OWN_PROCESS"
ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker("own_process") is None or os.environ.get(INNER_ENV):
        return None  # pytest calls the test here
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         pyfuncitem.nodeid],
        cwd=ROOT, env={**os.environ, INNER_ENV: "1"}, capture_output=True, text=True,
        timeout=600)
    if inner.returncode == 0 and " skipped" in inner.stdout:
        pytest.skip(inner.stdout.strip().splitlines()[-1])
    assert inner.returncode == 0, inner.stdout[-6000:] + inner.stderr[-2000:]
    return True
