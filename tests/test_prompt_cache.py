"""Prompt (KV) cache on the real engine and tiny model: growing chats, shared prefixes, bounds,
freeing."""

from __future__ import annotations

import time

import pytest

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec
from bridge.engine.prompt_cache import PromptCache
from bridge.wire.options import Options

SYSTEM = ("You are a helpful assistant. Answer briefly, in plain words, and never make things up. "
          "The weather today is sunny with a chance of rain in the afternoon.")
TURNS = ["hello", "What is the capital of France?", "And Germany?",
         "Tell me about the quick brown fox."]


def drain(job: Job, timeout: float = 60) -> list:
    events = []
    while True:
        ev = job.events.get(timeout=timeout)
        events.append(ev)
        if isinstance(ev, Done | Failed):
            return events


def ask(engine: Engine, path, messages: list[dict], n: int = 24,
        seed: int = -1) -> tuple[str, Done]:
    job = Job(str(path), "tiny", spec=PromptSpec(messages=messages),
              options=Options(temperature=0, num_predict=n, seed=seed))
    engine.submit(job)
    events = drain(job)
    assert isinstance(events[-1], Done), events[-1]
    return "".join(e.text for e in events if isinstance(e, Chunk)), events[-1]


def grow_chat(engine: Engine, path, seed: int = -1) -> list[tuple[str, Done]]:
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    results = []
    for turn in TURNS:
        messages.append({"role": "user", "content": turn})
        text, done = ask(engine, path, messages, seed=seed)
        results.append((text, done))
        messages.append({"role": "assistant", "content": text})
    return results


def make_engine(cache_bytes: int) -> Engine:
    eng = Engine(keep_alive=300, num_parallel=4, prompt_cache_bytes=cache_bytes)
    eng.start()
    return eng


@pytest.fixture
def cached():
    eng = make_engine(1 << 28)
    yield eng
    eng.stop()


@pytest.fixture
def uncached():
    eng = make_engine(0)
    yield eng
    eng.stop()


@pytest.mark.parametrize("seed", [-1, 3], ids=["batched", "single"])
def test_growing_chat_reuses_the_cache_and_answers_the_same(cached, uncached, tiny_model_dir, seed):
    with_cache = grow_chat(cached, tiny_model_dir, seed)
    without = grow_chat(uncached, tiny_model_dir, seed)
    assert [t for t, _ in with_cache] == [t for t, _ in without]
    assert with_cache[0][1].cached_tokens == 0
    assert all(d.cached_tokens == 0 for _, d in without)
    for (_, prev), (_, done) in zip(with_cache, with_cache[1:], strict=False):
        # Each turn re-reads at least the previous turn's prompt from the cache...
        assert done.cached_tokens >= prev.prompt_eval_count
        # ...and only the new tail is prefilled; prompt_eval_count stays the whole prompt (Ollama).
        assert done.cached_tokens < done.prompt_eval_count


def test_requests_sharing_a_system_prompt_share_its_cache(cached, tiny_model_dir):
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    second = [{"role": "system", "content": SYSTEM}, {"role": "user",
                                                      "content": "What is the capital?"}]
    _, done1 = ask(cached, tiny_model_dir, first)
    _, done2 = ask(cached, tiny_model_dir, second)
    assert done1.cached_tokens == 0
    assert done2.cached_tokens >= 30, "the system prompt's tokens came from the cache"


def test_abandoned_request_leaves_no_cache_entry(cached, tiny_model_dir):
    job = Job(str(tiny_model_dir), "tiny",
              spec=PromptSpec(messages=[{"role": "user", "content": "hello"}]),
              options=Options(temperature=0, num_predict=1500))
    cached.submit(job)
    assert isinstance(job.events.get(timeout=30), Chunk)
    job.cancel()
    assert isinstance(drain(job)[-1], Failed)
    ask(cached, tiny_model_dir, [{"role": "user", "content": "bye"}], n=2)
    assert len(cached.prompts) == 1, "only the finished request's cache is kept"


def test_unloading_a_model_drops_its_cache(cached, tiny_model_dir):
    ask(cached, tiny_model_dir, [{"role": "user", "content": "hello"}], n=2)
    assert len(cached.prompts) == 1
    unload = Job(str(tiny_model_dir), "tiny", keep_alive=0)
    cached.submit(unload)
    assert drain(unload)[-1].done_reason == "unload"
    assert len(cached.prompts) == 0 and cached.prompts.nbytes == 0


def test_keep_alive_expiry_drops_the_cache_too(cached, tiny_model_dir):
    job = Job(str(tiny_model_dir), "tiny",
              spec=PromptSpec(messages=[{"role": "user", "content": "hi"}]),
              options=Options(temperature=0, num_predict=2), keep_alive=0.3)
    cached.submit(job)
    drain(job)
    deadline = time.time() + 10
    while cached.snapshot() and time.time() < deadline:
        time.sleep(0.1)
    assert cached.snapshot() == [] and len(cached.prompts) == 0


def kv(tokens: int):
    """A one-layer KV cache holding `tokens` positions (real MLX arrays)."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    c = KVCache()
    c.update_and_fetch(mx.zeros((1, 2, tokens, 8)), mx.zeros((1, 2, tokens, 8)))
    return [c]


def test_byte_budget_evicts_least_recently_used_first():
    one = kv(16)[0].nbytes
    pc = PromptCache(max_bytes=2 * one + one // 2)
    pc.insert("m", list(range(16)), kv(16))
    pc.insert("m", list(range(100, 116)), kv(16))
    pc.insert("m", list(range(16)), kv(16))  # used again (a finished turn re-inserts): now newest
    pc.insert("m", list(range(200, 216)), kv(16))
    assert pc.nbytes <= pc.max_bytes and len(pc) == 2, (pc.nbytes, len(pc))
    assert pc.fetch("m", list(range(16)) + [7])[1] == 16
    assert pc.fetch("m", list(range(100, 116)) + [7])[1] == 0
    assert pc.fetch("m", list(range(200, 216)) + [1])[1] == 16


def test_exact_hit_leaves_one_token_to_prefill():
    pc = PromptCache()
    pc.insert("m", [1, 2, 3, 4], kv(4))
    cache, cached = pc.fetch("m", [1, 2, 3, 4])
    assert cached == 3 and cache[0].offset == 3
