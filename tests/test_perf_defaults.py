"""Defaults that win on the machine they run on (issue 17): BLAS threads from the idle cores,
8 parallel slots (fewer when memory is short), and a warm-up at load so that no request pays
MLX's one-time kernel compilation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bridge.config import load_config
from bridge.engine import Done, Engine, Job, PromptSpec, blas, warmup
from bridge.wire.options import Options

from .helpers import tiny_app


@pytest.fixture
def no_thread_override(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MLX_BRIDGE_BLAS_THREADS", raising=False)


def test_blas_uses_every_physical_core_of_an_idle_machine(no_thread_override):
    cores = blas.physical_cores()
    assert blas.threads(load=0.0) == cores
    assert blas.threads(load=0.3) == cores


def test_blas_leaves_the_busy_cores_alone(no_thread_override):
    cores = blas.physical_cores()
    assert blas.threads(load=cores + 3.0) == 1  # a loaded machine: one thread, never zero
    if cores > 2:
        assert blas.threads(load=1.0) == cores - 1


def test_blas_threads_read_the_load_average_only_without_proc_stat(no_thread_override,
                                                                   monkeypatch):
    monkeypatch.setattr(blas, "_cpu_times", lambda: None)  # no /proc/stat: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    assert blas.threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert blas.threads() == blas.physical_cores()


def test_blas_threads_follow_the_cpu_use_now_not_the_lagging_load_average(no_thread_override,
                                                                          monkeypatch):
    """The load average lags by a minute (a benchmark's raw run just ended): the CPU use of the
    last half second decides, not counting this process's own start-up work."""
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))  # ignored
    monkeypatch.setattr(blas.time, "sleep", lambda s: None)
    cores = blas.physical_cores()
    readings = iter([(1000, 500, 0), (1100, 500, 0)])  # 100 jiffies, none idle: all busy
    monkeypatch.setattr(blas, "_cpu_times", lambda: next(readings))
    assert blas.threads() == 1
    readings = iter([(1000, 500, 0), (1100, 505, 90)])  # busy, but with this process's work
    assert blas.threads() == cores
    readings = iter([(1000, 500, 0), (1100, 600, 0)])  # idle now, whatever the load average
    assert blas.threads() == cores


def test_physical_cores_do_not_count_smt_siblings():
    assert 1 <= blas.physical_cores() <= len(os.sched_getaffinity(0))


def test_num_parallel_defaults_to_eight():
    assert load_config({}).num_parallel == 8
    assert load_config({"OLLAMA_NUM_PARALLEL": "2"}).num_parallel == 2


def drain(job: Job, timeout: float = 60) -> Done:
    while True:
        event = job.events.get(timeout=timeout)
        if isinstance(event, Done):
            return event
        assert not hasattr(event, "error"), event


def test_slots_are_lowered_when_memory_cannot_hold_full_contexts(tiny_model_dir, monkeypatch):
    eng = Engine(num_parallel=8, prompt_cache_bytes=0)
    eng.start()
    try:
        load = Job(str(tiny_model_dir), "tiny")
        eng.submit(load)
        drain(load)
        loaded = eng.cache.models[str(tiny_model_dir)]
        assert loaded.kv_bytes_per_token > 0  # measured at load
        job = Job(str(tiny_model_dir), "tiny", spec=PromptSpec(prompt="x"),
                  options=Options(num_ctx=1000))
        per_job = loaded.kv_bytes_per_token * 1000
        monkeypatch.setattr(warmup, "available_memory", lambda: per_job * 100)
        assert eng._capacity(loaded, job) == 8
        monkeypatch.setattr(warmup, "available_memory", lambda: int(per_job * 3 / 0.8) + 1)
        assert eng._capacity(loaded, job) == 3
        monkeypatch.setattr(warmup, "available_memory", lambda: 10)
        assert eng._capacity(loaded, job) == 1
    finally:
        eng.stop()


# A fresh process with an empty MLX compile cache (TMPDIR), as after a fresh install: the first
# request after an explicit load must not pay MLX's kernel compilation (seconds on a CPU).
FIRST_REQUEST = """
import json, sys, time
from bridge.engine import Done, Engine, Job, PromptSpec
from bridge.wire.options import Options
eng = Engine(warm_up=sys.argv[2] == "1")
eng.start()
load = Job(sys.argv[1], "tiny")
eng.submit(load)
load.events.get(timeout=120)
# Long enough for the fast CPU attention (bridge/engine/cpu_attention.py) where it applies.
question = "The quick brown fox jumps over the lazy dog. " * 4
job = Job(sys.argv[1], "tiny", spec=PromptSpec(messages=[{"role": "user", "content": question}]),
          options=Options(num_predict=4))
began = time.perf_counter()
eng.submit(job)
while not isinstance(job.events.get(timeout=120), Done):
    pass
print(json.dumps({"first_s": time.perf_counter() - began}))
"""


def first_request_seconds(model_dir, tmp_path, warm: bool) -> float:
    tmp = tmp_path / ("warm" if warm else "cold")
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-c", FIRST_REQUEST, str(model_dir), str(int(warm))],
                         env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True,
                         timeout=180, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["first_s"]


@pytest.mark.slow
@pytest.mark.serial  # a 0.5 s bound an idle CPU keeps
def test_the_first_request_after_a_load_does_not_pay_kernel_compilation(tiny_model_dir,
                                                                        tmp_path):
    """With the warm-up at load, and even without it: the compiled kernels a first request used
    to pay for (seconds on a CPU) were mlx-lm's sampler's (`mx.compile`d top-k/top-p); the
    bridge's own sampler (bridge/engine/sampling.py) compiles nothing, and the fast CPU
    attention's fused exp is compiled when the model loads (cpu_attention.compile_now), so
    neither run does."""
    began = time.perf_counter()
    warm = first_request_seconds(tiny_model_dir, tmp_path, warm=True)
    cold = first_request_seconds(tiny_model_dir, tmp_path, warm=False)
    assert warm < 0.5 and cold < 0.5, (warm, cold, time.perf_counter() - began)


@pytest.fixture
def own_app(tiny_model_dir, tmp_path):
    """An app of this test's own: on the session's shared one a job another module left running
    on tiny defers the keep_alive 0 unload this test starts from (as Ollama's does)."""
    yield from tiny_app(tiny_model_dir, tmp_path)


def test_a_load_also_readies_the_request_side_tokenizer(own_app, tiny_model_dir):
    """`ollama run` loads first: after that, the first chat must not load a tokenizer."""
    app = own_app
    client = app.test_client()
    client.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
    tokenizers = app.extensions["bridge"].local.tokenizers
    assert str(tiny_model_dir.resolve()) not in tokenizers._slots  # an unload drops it
    assert client.post("/api/generate", json={"model": "tiny"}).get_json()["done_reason"] == "load"
    slot = tokenizers._slots[str(tiny_model_dir.resolve())]
    assert slot.tokenizer is not None


def test_a_failing_warm_up_never_fails_the_load(tiny_model_dir, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no warm-up today")

    monkeypatch.setattr(warmup, "kv_bytes_per_token", broken)
    eng = Engine(prompt_cache_bytes=0)
    eng.start()
    try:
        job = Job(str(tiny_model_dir), "tiny", spec=PromptSpec(prompt="hi"),
                  options=Options(num_predict=3))
        eng.submit(job)
        assert drain(job).eval_count == 3
    finally:
        eng.stop()
    assert "warm-up failed" in caplog.text


def test_an_unload_of_a_model_not_loaded_drops_the_tokenizer_a_request_readied(own_app,
                                                                               tiny_model_dir):
    """A render-only request readies tiny's tokenizer without loading the model; a keep_alive 0
    unload (nothing loaded to unload) still hands that memory back."""
    client = own_app.test_client()
    tokenizers = own_app.extensions["bridge"].local.tokenizers
    key = str(tiny_model_dir.resolve())
    rendered = client.post("/api/generate", json={"model": "tiny", "prompt": "hi",
                                                  "_debug_render_only": True, "stream": False})
    assert rendered.status_code == 200 and key in tokenizers._slots
    assert client.get("/api/ps").get_json()["models"] == []  # the model itself never loaded
    unloaded = client.post("/api/generate", json={"model": "tiny", "keep_alive": 0}).get_json()
    assert unloaded["done_reason"] == "unload"
    assert key not in tokenizers._slots
