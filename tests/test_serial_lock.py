"""The suite's two workers and its `serial` tests (tests/serial_lock.py), in a session of their
own: a serial test runs with nothing of the other worker beside it (without the lock, the other
module's 3 s of tests run beside its 1.5 s); and an `own_process` test (tests/own_process.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .own_process import INNER_ENV

TESTS = Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from serial_lock import pytest_configure, pytest_runtest_protocol, pytest_unconfigure
"""
RECORD = """
import time
def record(log, name, seconds):
    began = time.time()
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"{name} {began} {time.time()}\\n")
"""
SERIAL = """
import pytest
from record import record
@pytest.mark.serial
def test_serial():
    record({log!r}, "serial", 1.5)
"""
OTHERS = """
import pytest
from record import record
@pytest.mark.parametrize("i", range(12))
def test_other(i):
    record({log!r}, f"other{{i}}", 0.25)
"""


def test_a_serial_test_runs_alone_and_the_rest_beside_it(tmp_path):
    log = tmp_path / "ran.log"
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "record.py").write_text(RECORD)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n  serial: alone\n")
    (tmp_path / "test_a.py").write_text(SERIAL.format(log=str(log)))
    (tmp_path / "test_b.py").write_text(OTHERS.format(log=str(log)))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-n", "2", "--dist", "loadfile", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    spans = {name: (float(a), float(b)) for name, a, b in
             (line.split() for line in log.read_text().splitlines())}
    began, ended = spans.pop("serial")
    assert len(spans) == 12
    beside = [n for n, (a, b) in spans.items() if a < ended and b > began]
    assert not beside, (began, ended, spans)


@pytest.mark.own_process
def test_an_own_process_test_runs_its_body_in_a_pytest_process_of_its_own():
    """tests/own_process.py: the body runs only where the inner run's variable is set (were it
    run here, this fails)."""
    assert os.environ.get(INNER_ENV) == "1"
