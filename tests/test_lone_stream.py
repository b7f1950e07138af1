"""A lone job decodes on mlx-lm's generate_step (cheaper per token than a batch of one) and goes
back into the batch when another job arrives (issue 17's per-token overhead): same tokens as the
batched path, cancellation and the prompt cache intact."""

from __future__ import annotations

import time

import pytest

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec, batch
from bridge.wire.options import Options

PROMPTS = ["Tell me about the quick brown fox.", "What is 12 times 12?", "Name a colour."]


def make_job(path, prompt: str, n: int) -> Job:
    return Job(str(path), "tiny", spec=PromptSpec(messages=[{"role": "user", "content": prompt}]),
               options=Options(temperature=0, num_predict=n))


def collect(job: Job) -> tuple[str, Done]:
    text = ""
    while True:
        event = job.events.get(timeout=60)
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, Done):
            return text, event
        assert isinstance(event, Chunk)
        text += event.text


def run(path, solo: bool, monkeypatch, staggered: bool) -> tuple[list[str], bool]:
    """The prompts' greedy answers; staggered: the others join while the first runs alone."""
    if not solo:
        monkeypatch.setattr(batch, "solo_capable", lambda loaded: False)
    seen_solo = []
    original = batch.BatchRunner._maybe_solo

    def spy(self):
        original(self)
        seen_solo.append(self._solo is not None)

    monkeypatch.setattr(batch.BatchRunner, "_maybe_solo", spy)
    engine = Engine(num_parallel=4, prompt_cache_bytes=0)
    engine.start()
    try:
        first = make_job(path, PROMPTS[0], 120)
        engine.submit(first)
        if staggered:
            first.events.get(timeout=60)  # it has started decoding (alone)
            time.sleep(0.05)
        rest = [make_job(path, p, 40) for p in PROMPTS[1:]]
        for job in rest:
            engine.submit(job)
        texts = [collect(job)[0] for job in [first, *rest]]
    finally:
        engine.stop()
        monkeypatch.undo()
    return texts, any(seen_solo)


@pytest.mark.parametrize("staggered", [False, True])
def test_the_lone_path_gives_the_batched_tokens(tiny_model_dir, monkeypatch, staggered):
    batched, went_solo_before = run(tiny_model_dir, False, monkeypatch, staggered)
    lone, went_solo = run(tiny_model_dir, True, monkeypatch, staggered)
    assert not went_solo_before and went_solo
    assert lone == batched


def test_a_lone_job_runs_on_generate_step_and_fills_the_prompt_cache(tiny_model_dir):
    engine = Engine(num_parallel=4)
    engine.start()
    try:
        messages = [{"role": "user", "content": "hello"}]
        job = Job(str(tiny_model_dir), "tiny", spec=PromptSpec(messages=messages),
                  options=Options(temperature=0, num_predict=300))
        engine.submit(job)
        solo, deadline = False, time.monotonic() + 5
        while not solo and time.monotonic() < deadline and not job.events.qsize() > 250:
            runner = next(iter(engine._runners.values()), None)
            solo = runner is not None and runner._solo is not None
            time.sleep(0.001)
        text, done = collect(job)
        assert done.eval_count == 300
        # The next turn finds prompt + answer in the cache (the lone path stored what it fed).
        again = Job(str(tiny_model_dir), "tiny", spec=PromptSpec(tokens=done.context + [1, 2]),
                    options=Options(temperature=0, num_predict=2))
        engine.submit(again)
        assert collect(again)[1].cached_tokens >= len(done.context) - 1
    finally:
        engine.stop()
    assert solo


def test_a_lone_job_is_canceled_at_its_next_token(long_model_dir):
    engine = Engine(num_parallel=4)
    engine.start()
    try:
        job = Job(str(long_model_dir), "tiny", spec=PromptSpec(prompt="go on"),
                  options=Options(temperature=0, num_predict=100_000))
        engine.submit(job)
        job.events.get(timeout=60)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until it runs alone (the random model may hit EOS)
            runner = next(iter(engine._runners.values()), None)
            if runner is None or runner._solo is not None:
                break
            time.sleep(0.0005)
        job.cancel()
        began = time.perf_counter()
        while not isinstance(event := job.events.get(timeout=30), Done | Failed):
            pass
        assert isinstance(event, Failed) and "cancel" in event.error.message
        assert time.perf_counter() - began < 3
        assert engine.health()["active"] == 0
    finally:
        engine.stop()
