"""Continuous batching on the real engine and tiny model: same greedy answers, cancel, model
switch."""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec
from bridge.errors import ClientClosed
from bridge.testing import build_tiny_model
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings

PROMPTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog and then some more",
    "What is the capital of France?",
    "Once upon a time there was a little server that spoke the language of llamas",
]


class TimedQueue(queue.Queue):
    """An event queue that remembers when each event was put (to check interleaving)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[int, object]] = []

    def put(self, item, block=True, timeout=None):  # noqa: D401 - queue.Queue signature
        self.times.append((time.monotonic_ns(), item))
        super().put(item, block, timeout)


def drain(job: Job, timeout: float = 60) -> list:
    events = []
    while True:
        ev = job.events.get(timeout=timeout)
        events.append(ev)
        if isinstance(ev, Done | Failed):
            return events


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, Chunk))


def chat_job(path, prompt: str, n: int = 40, timed: bool = False, **opts) -> Job:
    spec = PromptSpec(messages=[{"role": "user", "content": prompt}])
    options = Options(temperature=opts.pop("temperature", 0), num_predict=n, **opts)
    extra = {"events": TimedQueue()} if timed else {}
    return Job(str(path), "tiny", spec=spec, options=options, **extra)


@pytest.fixture
def engine():
    # No prompt cache here: this file checks batching alone (test_prompt_cache.py covers both).
    eng = Engine(keep_alive=300, max_loaded=2, max_queue=16, num_parallel=4, prompt_cache_bytes=0)
    eng.start()
    yield eng
    eng.stop()


def run_alone(engine: Engine, path, prompts, **kw) -> list[tuple[str, int]]:
    answers = []
    for p in prompts:
        job = chat_job(path, p, **kw)
        engine.submit(job)
        events = drain(job)
        assert isinstance(events[-1], Done)
        answers.append((text_of(events), events[-1].eval_count))
    return answers


def run_together(engine: Engine, path, prompts, **kw) -> list[Job]:
    jobs = [chat_job(path, p, timed=True, **kw) for p in prompts]
    for job in jobs:
        engine.submit(job)
    for job in jobs:
        drain(job)
    return jobs


def first_chunk_ns(job: Job) -> int:
    """When the job's first output came (its Done, when the answer's text was all dropped:
    a few sampled byte tokens that make no character)."""
    return next(t for t, ev in job.events.times if isinstance(ev, Chunk | Done | Failed))


def end_ns(job: Job) -> int:
    return next(t for t, ev in job.events.times if isinstance(ev, Done | Failed))


def test_parallel_greedy_answers_equal_sequential_ones(engine, tiny_model_dir):
    alone = run_alone(engine, tiny_model_dir, PROMPTS, n=60)
    jobs = run_together(engine, tiny_model_dir, PROMPTS, n=60)
    together = [(text_of([ev for _, ev in j.events.times]), j.events.times[-1][1].eval_count)
                for j in jobs]
    assert together == alone
    assert all(count == 60 for _, count in together)
    # They really ran together: every job streamed its first token before any job ended.
    assert max(first_chunk_ns(j) for j in jobs) < min(end_ns(j) for j in jobs)


def test_batch_is_bounded_by_num_parallel(tiny_model_dir):
    eng = Engine(num_parallel=2, prompt_cache_bytes=0)
    eng.start()
    try:
        jobs = run_together(eng, tiny_model_dir, PROMPTS[:3], n=30)
    finally:
        eng.stop()
    assert all(isinstance(j.events.times[-1][1], Done) for j in jobs)
    # The third job waits for a free slot: it starts only after one of the first two ended.
    assert first_chunk_ns(jobs[2]) > min(end_ns(jobs[0]), end_ns(jobs[1]))


def test_seeded_jobs_run_alone_and_reproduce(engine, tiny_model_dir):
    seeded = [chat_job(tiny_model_dir, "hello", n=30, temperature=1.0, seed=7) for _ in range(2)]
    others = [chat_job(tiny_model_dir, p, n=30, temperature=1.0) for p in PROMPTS]
    for job in [seeded[0], *others, seeded[1]]:
        engine.submit(job)
    texts = [text_of(drain(j)) for j in seeded]
    for job in others:
        assert isinstance(drain(job)[-1], Done)
    assert texts[0] == texts[1] and texts[0]


def test_cancel_frees_the_slot_and_a_short_request_is_not_delayed(engine, tiny_model_dir):
    long = chat_job(tiny_model_dir, PROMPTS[1], n=1500)
    neighbour = chat_job(tiny_model_dir, PROMPTS[2], n=200)
    engine.submit(long)
    engine.submit(neighbour)
    assert isinstance(long.events.get(timeout=30), Chunk)
    long.cancel()
    long_events = drain(long)
    assert isinstance(long_events[-1], Failed) and isinstance(long_events[-1].error, ClientClosed)
    assert len(long_events) < 1500, "the abandoned job stopped long before its limit"
    short = chat_job(tiny_model_dir, "hello", n=3, timed=True)
    engine.submit(short)
    assert isinstance(drain(short)[-1], Done)
    neighbour_events = drain(neighbour)
    assert isinstance(neighbour_events[-1], Done) and neighbour_events[-1].eval_count == 200
    assert engine.health()["active"] == 0 and engine.health()["queued"] == 0


def test_another_models_job_runs_beside_a_long_job(engine, long_model_dir, tmp_path):
    """Fair across models: B starts while A's long batch runs; order stays FIFO within a model."""
    other = build_tiny_model(tmp_path / "other", seed=3)
    expected_other = run_alone(engine, other, ["hello"], n=20)
    expected_late = run_alone(engine, long_model_dir, [PROMPTS[2]], n=5)
    long_a = chat_job(long_model_dir, PROMPTS[0], n=2000, timed=True, num_ctx=4096)
    engine.submit(long_a)
    assert isinstance(long_a.events.get(timeout=30), Chunk)
    b_job = chat_job(other, "hello", n=20, timed=True)
    late_a = chat_job(long_model_dir, PROMPTS[2], n=5, timed=True)
    submitted = time.monotonic_ns()
    engine.submit(b_job)
    engine.submit(late_a)
    for job in (b_job, late_a, long_a):
        assert isinstance(drain(job)[-1], Done)
    assert end_ns(b_job) < end_ns(long_a) and end_ns(late_a) < end_ns(long_a)
    assert (first_chunk_ns(b_job) - submitted) / 1e9 < 3, "B did not wait for A's long job"
    assert (text_of([ev for _, ev in b_job.events.times]), 20) == expected_other[0]
    assert (text_of([ev for _, ev in late_a.events.times]), 5) == expected_late[0]
    assert long_a.events.times[-1][1].eval_count == 2000


def test_jobs_of_one_model_keep_their_order_behind_a_single_job(engine, tiny_model_dir):
    """A seeded job runs alone: the next job of its model waits for it (no overtaking)."""
    seeded = chat_job(tiny_model_dir, PROMPTS[0], n=300, timed=True, seed=3, num_ctx=8192)
    after = chat_job(tiny_model_dir, PROMPTS[1], n=5, timed=True)
    engine.submit(seeded)
    engine.submit(after)
    for job in (seeded, after):
        assert isinstance(drain(job)[-1], Done)
    assert first_chunk_ns(after) > end_ns(seeded)


def long_and_short_ttft(url: str) -> tuple[float, dict]:
    """TTFT of a short chat on model `b` sent while a long generation on model `a` runs."""
    long_body = {"model": "a", "prompt": "The quick brown fox", "raw": True, "stream": True,
                 "options": {"temperature": 0, "num_predict": 3000, "num_ctx": 4000}}
    short_body = {"model": "b", "messages": [{"role": "user", "content": "hello"}], "stream": True,
                  "options": {"temperature": 0, "num_predict": 5}}
    with requests.post(url + "/api/generate", json=long_body, stream=True,
                       timeout=300) as long_resp:
        lines = long_resp.iter_lines()
        next(lines)
        began = time.monotonic()
        with requests.post(url + "/api/chat", json=short_body, stream=True, timeout=300) as short:
            short_lines = short.iter_lines()
            next(short_lines)
            ttft = time.monotonic() - began
            list(short_lines)
        final = [json.loads(line) for line in lines if line][-1]
    return ttft, final


def test_a_short_chat_on_another_model_is_not_stuck_behind_a_long_job(tmp_path, long_model_dir):
    mappings = tmp_path / "m.yaml"
    other = build_tiny_model(tmp_path / "other", seed=4)
    write_mappings(mappings, {"a": {"mlx": str(long_model_dir)}, "b": {"mlx": str(other)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / "h"),
                              "--upstream", "none"])
    try:
        ttft, final = long_and_short_ttft(url)
        assert ttft < 3, f"the short chat waited {ttft:.1f} s"
        assert (final["done"] is True and final["eval_count"] == 3000
                and final["done_reason"] == "length")
    finally:
        stop_server(proc)


def forcing_factory(calls: list, forced: list):
    """A structured-output stand-in: a logits processor that allows one token only."""

    def factory(tokenizer):
        import mlx.core as mx

        calls.append(threading.current_thread().name)
        token = tokenizer.encode("the", add_special_tokens=False)[0]
        forced.append(tokenizer.decode([token]))

        def processor(tokens, logits):
            mask = mx.full(logits.shape, -1e9, dtype=logits.dtype)
            mask[..., token] = 0
            return logits + mask

        return processor

    return factory


@pytest.mark.parametrize("seed", [-1, 5], ids=["batched", "single"])
def test_logits_processor_factory_runs_on_the_engine_thread(engine, tiny_model_dir, seed):
    calls: list[str] = []
    forced: list[str] = []
    job = chat_job(tiny_model_dir, "hello", n=6, seed=seed)
    job.spec.logits_processor_factory = forcing_factory(calls, forced)
    neighbour = chat_job(tiny_model_dir, "hello", n=6)
    engine.submit(job)
    engine.submit(neighbour)
    events = drain(job)
    assert isinstance(events[-1], Done)
    assert calls == ["mlx-engine"] and forced[0]
    assert text_of(events) == forced[0] * 6
    assert text_of(drain(neighbour)) != forced[0] * 6, "the processor is per job"


def chat(url: str, prompt: str, n: int) -> str:
    r = requests.post(url + "/api/chat", json={
        "model": "tiny", "stream": False, "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": n}}, timeout=120)
    r.raise_for_status()
    return r.json()["message"]["content"]


def test_parallel_http_chats_equal_sequential_ones(server):
    alone = [chat(server, p, 40) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: chat(server, p, 40), PROMPTS))
    assert together == alone


BUSY = {"error": "server busy, please try again.  maximum pending requests exceeded"}


def test_full_queue_answers_503_through_a_real_server(mappings_file, tmp_path):
    proc, url = start_server(["--mappings", str(mappings_file), "--home", str(tmp_path)],
                             env={"OLLAMA_MAX_QUEUE": "1", "OLLAMA_NUM_PARALLEL": "1"})
    body = {"model": "tiny", "stream": False, "messages": [{"role": "user", "content": "hello"}],
            "options": {"temperature": 0, "num_predict": 400}}
    try:
        chat(url, "warm up", 1)  # the model is loaded: the first job starts at once
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(
                lambda _: requests.post(url + "/api/chat", json=body, timeout=120), range(6)))
        statuses = sorted(r.status_code for r in answers)
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) == {200, 503}
        assert all(r.json() == BUSY for r in answers if r.status_code == 503)
        assert chat(url, "hello", 3), "the server takes work again once the queue drained"
    finally:
        stop_server(proc)


def test_a_failing_logits_processor_fails_its_job_only(engine, tiny_model_dir):
    def factory(tokenizer):
        def processor(tokens, logits):
            raise ValueError("grammar exploded")

        return processor

    expected = run_alone(engine, tiny_model_dir, ["hello"], n=30)
    bad = chat_job(tiny_model_dir, "hello", n=5)
    bad.spec.logits_processor_factory = factory
    neighbour = chat_job(tiny_model_dir, "hello", n=30)
    engine.submit(bad)
    engine.submit(neighbour)
    failed = drain(bad)[-1]
    assert isinstance(failed, Failed) and "grammar exploded" in failed.error.message
    events = drain(neighbour)
    assert isinstance(events[-1], Done), "the batch neighbour is not failed with it"
    assert (text_of(events), events[-1].eval_count) == expected[0]
    ok = chat_job(tiny_model_dir, "hello", n=5)
    engine.submit(ok)
    assert isinstance(drain(ok)[-1], Done)
    assert engine.health()["active"] == 0 and engine.snapshot()[0].active == 0
