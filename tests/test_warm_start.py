"""The engine's warm start and the allocator switch that lets an unload give memory back (issue
17, "RSS after unload"): a tiny model loaded, run and unloaded at start, never seen by clients;
a failure there never stops the engine; glibc's freed heap tops kept while a model is loaded and
handed back once none is."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from bridge.config import load_config
from bridge.engine import Done, Engine, Job, PromptSpec
from bridge.engine.memory import _libc_function, allocator_phase
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings

MB = 1 << 20


def ready(engine: Engine, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not engine._ready:
        assert time.time() < deadline, "the engine did not start"
        time.sleep(0.02)


def generate(engine: Engine, path: str) -> Done:
    job = Job(path, "m", spec=PromptSpec(prompt="hello"), options=Options(temperature=0,
                                                                          num_predict=3))
    engine.submit(job)
    while True:
        event = job.events.get(timeout=60)
        if not hasattr(event, "text"):
            assert isinstance(event, Done), event
            return event


def test_warm_start_runs_a_tiny_model_once_and_leaves_nothing_loaded(tiny_model_dir, caplog):
    engine = Engine(keep_alive=300, max_loaded=1, warm_start=True)
    with caplog.at_level("INFO", logger="bridge.engine"):
        engine.start()
        ready(engine)
    try:
        assert engine.warm_start_ms is not None and engine.warm_start_ms > 0
        assert engine.health()["warm_start_ms"] == engine.warm_start_ms
        assert engine.snapshot() == [] and engine.cache.models == {}
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("model loaded model=warm-start") for m in messages), messages
        assert any("model unloaded model=warm-start reason=warm start" in m for m in messages)
        # max_loaded=1: a real model loads beside nothing the warm start left behind
        assert generate(engine, str(tiny_model_dir)).eval_count == 3
        assert [m.key for m in engine.snapshot()] == [str(tiny_model_dir)]
    finally:
        engine.stop()


def test_a_failed_warm_start_is_logged_and_the_engine_serves(tiny_model_dir, monkeypatch,
                                                            caplog):
    def broken(path, **kw):
        raise OSError("no space left on device")

    monkeypatch.setattr("bridge.testing.build_tiny_model", broken)
    engine = Engine(keep_alive=300, warm_start=True)
    with caplog.at_level("WARNING", logger="bridge.engine"):
        engine.start()
        ready(engine)
    try:
        assert engine.warm_start_ms is None
        assert any("warm start failed error=OSError: no space left on device" in r.getMessage()
                   for r in caplog.records)
        assert generate(engine, str(tiny_model_dir)).eval_count == 3
    finally:
        engine.stop()


def test_engines_built_in_process_do_not_warm_start_unless_asked():
    assert Engine().warm_start is False
    assert Engine().health()["warm_start_ms"] is None


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("on", True),
                                           ("off", False), ("0", False), ("false", False)])
def test_the_warm_start_switch(value, on):
    env = {} if value is None else {"MLX_BRIDGE_WARM_START": value}
    assert load_config(env).warm_start is on


def test_a_served_bridge_warm_starts_and_lists_nothing(tmp_path, tiny_model_dir):
    """Through a real server: warm_start_ms in /health, nothing listed, a model served."""
    maps = write_mappings(tmp_path / "maps.yaml",
                          {"tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(maps), "--home", str(tmp_path / "home"),
                              "--upstream", "none", "--no-demo"],
                             env={"MLX_BRIDGE_WARM_START": "on"})  # tests/helpers.py: off
    try:
        deadline = time.time() + 60
        while (warm := requests.get(url + "/health", timeout=5).json()["engine"]
               ["warm_start_ms"]) is None:
            assert time.time() < deadline, "no warm start reported"
            time.sleep(0.1)
        assert warm > 0
        assert requests.get(url + "/api/ps", timeout=5).json() == {"models": []}
        names = [m["name"] for m in requests.get(url + "/api/tags", timeout=5).json()["models"]]
        assert not any("warm" in n for n in names), names
        r = requests.post(url + "/api/generate", json={"model": "tiny", "prompt": "hi",
                                                       "stream": False,
                                                       "options": {"num_predict": 2}},
                          timeout=60)
        assert r.status_code == 200 and r.json()["eval_count"] == 2
    finally:
        stop_server(proc)


def _rss() -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(ln.split()[1]) * 1024 for ln in status.splitlines()
                if ln.startswith("VmRSS:"))


def _fill_and_free_in_a_thread(nbytes: int) -> int:
    """malloc `nbytes` in 1 MB blocks on a fresh thread (its own arena), touch them, free them
    all; the RSS just after, minus the RSS before."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    grew: list[int] = []

    def run() -> None:
        before = _rss()
        blocks = [libc.malloc(MB) for _ in range(nbytes // MB)]
        for b in blocks:
            ctypes.memset(b, 1, MB)
        for b in reversed(blocks):  # the last one first: each free grows the heap's top
            libc.free(b)
        grew.append(_rss() - before)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return grew[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.own_process  # the thresholds are the process's: other engines in a worker set them
def test_freed_heap_memory_is_kept_while_serving_and_handed_back_when_idle():
    if _libc_function("mallopt") is None:
        pytest.skip("not glibc")
    try:
        allocator_phase("serve")  # a model loaded: 40 MB freed stays for the next steps
        kept = _fill_and_free_in_a_thread(40 * MB)
        allocator_phase("idle")  # none loaded: the same frees go back as they happen
        returned = _fill_and_free_in_a_thread(40 * MB)
    finally:
        allocator_phase("idle")
    assert kept > 30 * MB, kept // MB
    assert returned < 5 * MB, returned // MB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.own_process  # the thresholds are the process's: other engines in a worker set them
def test_an_unload_hands_back_the_heap_top_kept_while_serving():
    """What the engine thread freed while serving stays in its heap's top; malloc_trim never
    shrinks a thread's heap, a free of 96 kB on the thread does (_trim_heap_top)."""
    if _libc_function("mallopt") is None:
        pytest.skip("not glibc")
    from bridge.engine.memory import _malloc_trim, _trim_heap_top

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    grew: dict[str, int] = {}

    def run() -> None:  # as the engine thread: serve, free, unload
        before = _rss()
        blocks = [libc.malloc(MB) for _ in range(40)]
        for b in blocks:
            ctypes.memset(b, 1, MB)
        for b in reversed(blocks):
            libc.free(b)
        grew["served"] = _rss() - before
        allocator_phase("idle")  # the unload's first step (ModelCache.unload)
        _malloc_trim()
        grew["malloc_trim"] = _rss() - before
        _trim_heap_top()
        grew["trimmed"] = _rss() - before

    try:
        allocator_phase("serve")
        t = threading.Thread(target=run)
        t.start()
        t.join()
    finally:
        allocator_phase("idle")
    assert grew["served"] > 30 * MB, grew
    assert grew["malloc_trim"] > 30 * MB, grew  # why free_memory needs more than malloc_trim
    assert grew["trimmed"] < 5 * MB, grew


def test_free_memory_trims_the_heap_top_only_when_no_model_is_loaded(monkeypatch):
    """An unload's free_memory trims the engine thread's heap top once no model is loaded
    (while one is, the serving phase keeps the top on purpose)."""
    from bridge.engine import memory

    calls: list[str] = []
    monkeypatch.setattr(memory, "_trim_heap_top", lambda: calls.append("trim"))
    memory.free_memory(idle=False)
    assert calls == []
    memory.free_memory(idle=True)
    assert calls == ["trim"]
