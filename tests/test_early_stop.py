"""A stop right after a start: the engine thread has not started MLX yet (it samples the CPU
for the BLAS thread count first, 0.5 s), so stop() does not wait for the sample and MLX's
import (1.6 s of every early stop before); the thread sees the stop, never starts MLX, and
answers what was queued meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

from bridge.engine import Done, Engine, Failed, Job, PromptSpec, blas
from bridge.errors import ShuttingDown
from bridge.wire.options import Options

from .helpers import start_server, stop_server, write_mappings


@pytest.fixture
def held_sample(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """The engine's BLAS set-up (the CPU sample of a first start) held until `release` is set;
    `sampling` says the engine thread got there."""
    sampling, release = threading.Event(), threading.Event()
    real_enable = blas.enable

    def slow_enable():
        sampling.set()
        release.wait(10)
        return real_enable()

    monkeypatch.setattr(blas, "enable", slow_enable)
    return sampling, release


def test_stop_during_the_blas_sample_returns_at_once_and_queued_jobs_are_answered(
        held_sample, tiny_model_dir):
    sampling, release = held_sample
    eng = Engine(max_queue=4)
    eng.start()
    assert sampling.wait(10)
    job = Job(str(tiny_model_dir), "m", spec=PromptSpec(prompt="hi"),
              options=Options(temperature=0, num_predict=2))
    eng.submit(job)  # accepted while the engine warms up
    began = time.monotonic()
    eng.stop()
    assert time.monotonic() - began < 0.5, "stop() waited for the warm-up"
    assert not eng._mlx_started
    release.set()
    event = job.events.get(timeout=10)
    assert isinstance(event, Failed) and isinstance(event.error, ShuttingDown)
    assert eng._finished.wait(10) and not eng._mlx_started, "MLX never started"


def test_a_start_after_an_early_stop_serves(held_sample, tiny_model_dir):
    sampling, release = held_sample
    eng = Engine(max_queue=4)
    eng.start()
    assert sampling.wait(10)
    eng.stop()  # returns before the warm-up ends
    threading.Timer(0.3, release.set).start()
    eng.start()  # waits for the stopping thread, then starts a fresh one
    try:
        job = Job(str(tiny_model_dir), "m", spec=PromptSpec(prompt="hi"),
                  options=Options(temperature=0, num_predict=2))
        eng.submit(job)
        events = [job.events.get(timeout=60)]
        while not isinstance(events[-1], Done | Failed):
            events.append(job.events.get(timeout=60))
        assert isinstance(events[-1], Done), events[-1]
    finally:
        eng.stop()


def test_a_server_stopped_right_after_its_start_exits_cleanly(tmp_path):
    mappings = write_mappings(tmp_path / "m.yaml", {})
    proc, _url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / "h")])
    assert stop_server(proc) == 0
    out = proc.stdout.read().decode(errors="replace")
    assert "Traceback" not in out and "terminate called" not in out, out[-2000:]
