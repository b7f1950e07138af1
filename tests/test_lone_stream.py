"""A lone job runs out of the batch, from its prefill on (cheaper per token than a batch of one,
and its first token comes one forward pass sooner on the CPU), and goes back into the batch when
another job arrives (issue 17): same tokens as the batched path, cancellation and the prompt
cache intact."""

from __future__ import annotations

import time

import pytest

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec, batch, sink, solo
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


def run(path, lone: bool, monkeypatch, staggered: bool) -> tuple[list[str], bool]:
    """The prompts' greedy answers; staggered: the others join while the first runs alone."""
    if not lone:
        monkeypatch.setattr(batch, "solo_capable", lambda loaded: False)
    seen_solo = []

    class Spy(solo.Solo):
        def __init__(self, *args):
            super().__init__(*args)
            seen_solo.append(True)

    monkeypatch.setattr(batch, "Solo", Spy)
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


def forwards_counted(monkeypatch) -> list[int]:
    """Every forward pass of a llama model from now on, as the number of tokens it took."""
    from mlx_lm.models import llama

    calls: list[int] = []
    original = llama.Model.__call__

    def counting(self, inputs, *args, **kwargs):
        calls.append(int(inputs.shape[1]))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(llama.Model, "__call__", counting)
    return calls


def test_early_steps_hand_out_each_token_after_its_own_forward_pass(tiny_model_dir, monkeypatch):
    """On the CPU mx.async_eval blocks, so mlx-lm's generate_step (which launches token t+1's
    forward pass before handing out token t) made every token wait one pass: early_steps does
    not, and decodes the same greedy tokens."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    assert not solo.pipelines()  # MLX runs on the CPU here
    model, _ = load(str(tiny_model_dir))
    prompt, greedy = [5, 17, 42, 9, 33], make_sampler(temp=0.0)

    def prefilled():
        cache = make_prompt_cache(model)
        mx.eval(model(mx.array(prompt[:-1])[None], cache=cache))
        return cache

    first_cache, second_cache = prefilled(), prefilled()
    calls = forwards_counted(monkeypatch)
    steps = solo.early_steps(prompt[-1], model, first_cache, greedy, [])
    first, logprobs = next(steps)
    assert calls == [1] and logprobs.shape == (model.args.vocab_size,)
    early = [first] + [next(steps)[0] for _ in range(11)]
    calls.clear()
    piped = generate_step(mx.array(prompt[-1:]), model, max_tokens=12, sampler=greedy,
                          prompt_cache=second_cache)
    assert next(piped)[0] == first and calls == [1, 1]  # one pass more before the first token
    assert early == [first] + [token for token, _ in piped]


def test_a_lone_jobs_first_token_costs_its_prompt_and_one_forward_pass(tiny_model_dir,
                                                                       monkeypatch):
    engine = Engine(num_parallel=4, prompt_cache_bytes=0)
    engine.start()
    try:
        collect(submit(engine, make_job(tiny_model_dir, "warm", 2)))  # the model loads
        calls = forwards_counted(monkeypatch)
        at_first: list[list[int]] = []
        original = sink.TokenSink.add

        def add(self, token, logprobs=None):
            if not self.tokens:
                at_first.append(list(calls))
            return original(self, token, logprobs)

        monkeypatch.setattr(sink.TokenSink, "add", add)
        job = submit(engine, make_job(tiny_model_dir, PROMPTS[0], 8))
        _, done = collect(job)
    finally:
        engine.stop()
    assert at_first == [[done.prompt_eval_count - 1, 1]]  # its prompt, then its last token


def submit(engine: Engine, job: Job) -> Job:
    engine.submit(job)
    return job


def seeded(path, tokens: list[int] | None = None, n: int = 12) -> Job:
    spec = PromptSpec(tokens=tokens) if tokens else PromptSpec(prompt=PROMPTS[1])
    return Job(str(path), "tiny", spec=spec, options=Options(temperature=0, seed=3,
                                                             num_predict=n))


@pytest.mark.parametrize("n", [1, 12])
def test_a_seeded_job_on_the_single_path_leaves_a_cache_the_next_turn_can_trust(tiny_model_dir, n):
    """The single path (a seed) hands out its first token early on the CPU: the cache then
    holds all tokens but that one, and the prompt cache must be told exactly what it holds."""
    answers = []
    for cache_bytes in (64 << 20, 0):
        engine = Engine(num_parallel=4, prompt_cache_bytes=cache_bytes)
        engine.start()
        try:
            _, first = collect(submit(engine, seeded(tiny_model_dir, n=n)))
            answers.append(collect(submit(engine, seeded(tiny_model_dir, first.context + [7, 8]))))
        finally:
            engine.stop()
    (cached_text, cached), (plain_text, plain) = answers
    assert cached.cached_tokens >= len(first.context) - 1 and plain.cached_tokens == 0
    assert cached.context == plain.context and cached_text == plain_text
