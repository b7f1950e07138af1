"""The engine loop failing: every job hears, the engine restarts (or the worker is replaced).

In-process tests inject faults into the real engine on the tiny model; the server tests inject
them into a real `mlx-bridge serve` process through tests/faultsite/sitecustomize.py, with a
second real server as the upstream an `auto` model falls back to.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec
from bridge.engine.batch import BatchRunner
from bridge.engine.sink import TokenSink
from bridge.errors import EngineError, EngineUnavailable
from bridge.testing import build_tiny_model
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings
from .fault_util import worker_pid

FAULTSITE = Path(__file__).parent / "faultsite"
PROMPT = "The quick brown fox"


def job_for(path, n: int = 4, prompt: str = PROMPT, **opts) -> Job:
    options = Options(temperature=0, num_predict=n, **opts)
    return Job(str(path), "tiny", spec=PromptSpec(prompt=prompt, raw=True), options=options)


def last_event(job: Job, timeout: float) -> Done | Failed:
    """The job's terminal event, which must come within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        event = job.events.get(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(event, Done | Failed):
            return event


def first_chunk(job: Job, timeout: float = 30) -> None:
    assert isinstance(job.events.get(timeout=timeout), Chunk)


def wait_running(engine: Engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.health()["state"] != "running":
        assert time.monotonic() < deadline, engine.health()
        time.sleep(0.05)


def boom(*_args, **_kwargs):
    raise RuntimeError("injected engine fault")


def once(real):
    """`real`, except that the first call raises like boom()."""
    fired: list[bool] = []

    def call(*args, **kwargs):
        if not fired:
            fired.append(True)
            boom()
        return real(*args, **kwargs)

    return call


@pytest.fixture
def engine():
    eng = Engine(keep_alive=300, max_loaded=1, max_queue=8, num_parallel=2, prompt_cache_bytes=0,
                 restart_delay=0.05)
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("other") / "other", seed=3)


def test_a_crash_outside_any_job_ends_every_job_and_the_engine_restarts(
        engine, tiny_model_dir, other_model):
    running = job_for(tiny_model_dir, n=5000, num_ctx=8192)
    waiting = job_for(other_model)  # max_loaded 1: waits for the running model
    engine.submit(running)
    first_chunk(running)
    engine.submit(waiting)
    engine._expire = once(engine._expire)  # the loop's keep_alive step: outside any job
    for job in (running, waiting):
        event = last_event(job, timeout=5)
        assert isinstance(event, Failed) and isinstance(event.error, EngineError), event
        assert "injected engine fault" in event.error.message and "restart" in event.error.message
    wait_running(engine)
    health = engine.health()
    assert health["restarts"] == 1 and "injected engine fault" in health["last_crash"]["error"]
    assert health["queued"] == 0 and health["active"] == 0
    again = job_for(tiny_model_dir)
    engine.submit(again)
    assert isinstance(last_event(again, timeout=30), Done), "models are reloaded on demand"


def test_a_crash_while_a_job_is_being_answered_still_answers_it(engine, tiny_model_dir):
    engine._release = once(engine._release)  # the bookkeeping between a job's end and its answer
    job = job_for(tiny_model_dir)
    engine.submit(job)
    event = last_event(job, timeout=30)
    assert isinstance(event, Failed) and "injected engine fault" in event.error.message
    wait_running(engine)
    again = job_for(tiny_model_dir)
    engine.submit(again)
    assert isinstance(last_event(again, timeout=30), Done)


def test_an_abort_that_raises_after_a_failed_step_still_ends_every_job(
        engine, tiny_model_dir, monkeypatch):
    jobs = [job_for(tiny_model_dir, n=3000, num_ctx=8192) for _ in range(2)]
    for job in jobs:
        engine.submit(job)
    for job in jobs:
        first_chunk(job)
    monkeypatch.setattr(BatchRunner, "step", boom)
    monkeypatch.setattr(BatchRunner, "abort", boom)
    for job in jobs:
        assert isinstance(last_event(job, timeout=5), Failed)
    monkeypatch.undo()
    wait_running(engine)
    again = job_for(tiny_model_dir)
    engine.submit(again)
    assert isinstance(last_event(again, timeout=30), Done)


def test_a_raising_cleanup_at_stop_still_stops_and_parks_the_thread(tiny_model_dir):
    eng = Engine(max_queue=4)
    eng.start()
    job = job_for(tiny_model_dir)
    eng.submit(job)
    assert isinstance(last_event(job, timeout=30), Done)
    eng.cache.clear = boom
    began = time.monotonic()
    eng.stop()
    assert time.monotonic() - began < 5, "stop() did not hang on the failed cleanup"
    assert eng._thread is not None and eng._thread.is_alive(), "a thread that ran MLX parks"
    assert eng.health()["state"] == "stopped"


def test_a_crash_loop_gives_up_reports_it_and_refuses_work(tiny_model_dir, monkeypatch):
    fatal: list[str] = []
    eng = Engine(max_queue=4, restart_delay=0.01, restart_limit=2,
                 on_fatal=lambda: fatal.append("called"))
    # On this engine only (each incarnation is this object): a patch of the class would crash
    # every engine in the process, the shared app's too.
    monkeypatch.setattr(eng, "_expire", boom)
    eng.start()
    deadline = time.monotonic() + 20
    while not fatal:
        assert time.monotonic() < deadline, eng.health()
        time.sleep(0.05)
    health = eng.health()
    assert health["state"] == "failed" and health["restarts"] == 2
    with pytest.raises(EngineUnavailable) as refused:
        eng.submit(job_for(tiny_model_dir))
    assert refused.value.status == 503 and "failed" in refused.value.message
    eng.stop()


def test_one_jobs_failing_sink_does_not_fail_its_batch(engine, tiny_model_dir, monkeypatch):
    alone = job_for(tiny_model_dir, n=30)
    engine.submit(alone)
    expected = last_event(alone, timeout=30)
    add = TokenSink.add
    bad = job_for(tiny_model_dir, n=30)

    def failing_add(self, token, *rest):
        if getattr(self.emit, "__self__", None) is bad.events and len(self.tokens) == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
        return add(self, token, *rest)

    monkeypatch.setattr(TokenSink, "add", failing_add)
    neighbour = job_for(tiny_model_dir, n=30)
    engine.submit(bad)
    engine.submit(neighbour)
    failed = last_event(bad, timeout=30)
    assert isinstance(failed, Failed) and "injected detokenizer fault" in failed.error.message
    done = last_event(neighbour, timeout=30)
    assert isinstance(done,
                      Done) and done.context == expected.context, "the neighbour finished untouched"
    assert engine.health()["restarts"] == 0


# ---- a real server process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery-up")
    mappings = write_mappings(root / "m.yaml",
                              {"auto-tiny": {"mlx": str(build_tiny_model(root / "up", seed=7))}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "h"),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


def faulty_server(root: Path, tiny_model_dir: Path, upstream: str) -> tuple:
    faults = root / "faults"
    faults.mkdir()
    mappings = write_mappings(root / "m.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "auto-tiny": {"mlx": str(tiny_model_dir), "backend": "auto"},
    }, upstream=upstream)
    env = {"PYTHONPATH": os.pathsep.join([str(FAULTSITE), os.environ.get("PYTHONPATH", "")]),
           "BRIDGE_TEST_FAULTS": str(faults)}
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "h")], env=env)
    return proc, url, faults


def generate(url: str, model: str, stream: bool = False, n: int = 6, timeout: float = 60, **opts):
    body = {"model": model, "prompt": PROMPT, "raw": True, "stream": stream,
            "options": {"temperature": 0, "num_predict": n, **opts}}
    return requests.post(url + "/api/generate", json=body, stream=stream, timeout=timeout)


def health(url: str) -> dict:
    return requests.get(url + "/health", timeout=10).json()


def wait_for(predicate, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_server_whose_engine_crashes_answers_every_request_and_recovers(
        tmp_path, tiny_model_dir, upstream):
    proc, url, faults = faulty_server(tmp_path, tiny_model_dir, upstream)
    try:
        assert generate(url, "tiny").status_code == 200
        with generate(url, "tiny", stream=True, n=20000, num_ctx=30000) as streaming:
            lines = streaming.iter_lines()
            assert "error" not in json.loads(next(lines))
            (faults / "hold").touch()  # keep the restarted engine down until the checks are done
            (faults / "crash").write_text("1")
            began = time.monotonic()
            rest = [json.loads(line) for line in lines if line]
        assert time.monotonic() - began < 5, "the stream beside the fault ended promptly"
        assert "injected engine fault" in rest[-1]["error"] and not any(r.get("done") for r in rest)

        down = health(url)
        assert down["status"] == "degraded" and down["engine"]["state"] == "restarting"
        assert down["engine"]["restarts"] == 1
        assert "injected engine fault" in down["engine"]["last_crash"]["error"]
        assert down["backends"]["mlx"]["available"] is False

        began = time.monotonic()
        local = generate(url, "tiny")
        assert local.status_code == 503 and "restarting" in local.json()["error"], local.text
        assert time.monotonic() - began < 2, "refused at once, not queued"
        via = generate(url, "auto-tiny")
        assert via.status_code == 200, via.text
        assert (via.json()["response"]
                == generate(upstream, "auto-tiny").json()["response"]), "from the upstream"
        assert requests.get(url + "/api/version", timeout=2).status_code == 200

        (faults / "hold").unlink()
        wait_for(lambda: health(url)["engine"]["state"] == "running", what="the engine restarted")
        again = generate(url, "tiny")
        assert again.status_code == 200 and again.json()["done"] is True
        assert health(url)["status"] == "ok"
    finally:
        stop_server(proc)


def test_an_engine_that_cannot_restart_ends_its_worker_and_a_fresh_one_serves(
        tmp_path, tiny_model_dir, upstream):
    proc, url, faults = faulty_server(tmp_path, tiny_model_dir, upstream)
    try:
        first = worker_pid(proc.pid)
        assert generate(url, "tiny").status_code == 200
        with generate(url, "tiny", stream=True, n=20000, num_ctx=30000) as streaming:
            lines = streaming.iter_lines()
            assert "error" not in json.loads(next(lines))
            # one crash, then one per restart: over the limit of 3
            (faults / "crash").write_text("4")
            rest = [json.loads(line) for line in lines if line]
        assert "injected engine fault" in rest[-1]["error"]
        wait_for(lambda: _child(proc.pid) not in (None, first), timeout=60,
                 what="gunicorn started a fresh worker")
        wait_for(lambda: _health_state(url) == "running", timeout=60,
                 what="the fresh worker serves")
        assert proc.poll() is None, "the master stays up"
        assert (faults / "crash").read_text() == "0"
        again = generate(url, "tiny")
        assert again.status_code == 200 and again.json()["done"] is True
        assert health(url)["engine"]["restarts"] == 0, "a fresh process"
    finally:
        stop_server(proc)
    log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert f"Worker (pid:{first}) exited with code 70" in log, log[-3000:]
    assert "engine failed for good" in log


def _child(master: int) -> int | None:
    try:
        return worker_pid(master, timeout=0.2)
    except AssertionError:
        return None


def _health_state(url: str) -> str:
    try:
        return health(url)["engine"]["state"]
    except (requests.RequestException, ValueError, KeyError):
        return ""
