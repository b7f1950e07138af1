"""KV-cache quantization (OLLAMA_KV_CACHE_TYPE q8_0 / q4_0) with batching and the prompt cache
still on (issue 17): mlx-lm's quantized caches, made mergeable (bridge/engine/kvquant.py)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import ollama
import pytest

from bridge.config import load_config
from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec
from bridge.testing import build_tiny_model
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings

QUESTIONS = ["Why is the sky blue?", "Name three colours.", "What is 12 times 12?"]


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A tiny model whose attention heads are 64 wide: MLX quantizes in groups of 64."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-wide", hidden_size=128,
                            num_heads=2, num_kv_heads=1, intermediate_size=256)


def test_the_cache_type_is_read_like_ollama(caplog):
    assert load_config({}).kv_cache_type == "f16"
    assert load_config({"OLLAMA_KV_CACHE_TYPE": "Q8_0"}).kv_cache_type == "q8_0"
    assert load_config({"OLLAMA_KV_CACHE_TYPE": "q4_0"}).kv_cache_type == "q4_0"
    with caplog.at_level(logging.WARNING, logger="bridge.config"):
        assert load_config({"OLLAMA_KV_CACHE_TYPE": "q3"}).kv_cache_type == "f16"
    assert "OLLAMA_KV_CACHE_TYPE" in caplog.text


def ask_all(engine: Engine, path, questions, **opts) -> list[Done]:
    """Submit every question at once (they batch), return each Done."""
    jobs = [Job(str(path), "m", spec=PromptSpec(messages=[{"role": "user", "content": q}]),
                options=Options(temperature=0, num_predict=12, **opts)) for q in questions]
    for job in jobs:
        engine.submit(job)
    done = []
    for job in jobs:
        while True:
            event = job.events.get(timeout=60)
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Done):
                done.append(event)
                break
            assert isinstance(event, Chunk)
    return done


def run_engine(kv: str, path, seed: int = -1):
    engine = Engine(kv_cache_type=kv, num_parallel=4)
    engine.start()
    try:
        done = ask_all(engine, path, QUESTIONS)
        again = ask_all(engine, path, QUESTIONS[:1], seed=seed)[0]  # through the prompt cache
        loaded = engine.cache.models[str(path)]
        return loaded.kv_bits, loaded.kv_bytes_per_token, engine.prompts.nbytes, done, again
    finally:
        engine.stop()


def test_q8_batches_and_caches_in_about_half_the_memory(wide_model_dir):
    bits, per_token, cached, done, again = run_engine("q8_0", wide_model_dir)
    f_bits, f_per_token, f_cached, f_done, _ = run_engine("f16", wide_model_dir)
    assert (bits, f_bits) == (8, None)
    assert all(d.eval_count == 12 for d in done)
    assert again.cached_tokens > 0  # the prompt cache served a quantized cache back
    # 8-bit codes plus a scale and a bias per 64 values: 0.56x of a float16 cache, 0.28x of the
    # float32 caches a CPU runs on.
    assert per_token <= 0.6 * f_per_token
    assert cached <= 0.6 * f_cached


def test_q4_and_the_single_path_run_on_quantized_caches(wide_model_dir):
    bits, per_token, _, done, again = run_engine("q4_0", wide_model_dir, seed=7)
    assert bits == 4 and all(d.eval_count == 12 for d in done)
    assert again.cached_tokens > 0 and again.eval_count == 12  # seeded: the single path


def test_a_model_that_cannot_be_quantized_keeps_its_cache(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.engine.warmup"):
        bits, _, _, done, _ = run_engine("q8_0", tiny_model_dir)  # 16-wide heads
    assert bits is None and all(d.eval_count == 12 for d in done)
    assert "KV cache stays unquantized" in caplog.text


def test_a_real_server_with_q8_answers_concurrent_clients(wide_model_dir, tmp_path):
    maps = write_mappings(tmp_path / "maps.yaml", {"wide": {"mlx": str(wide_model_dir),
                                                             "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(maps), "--home", str(tmp_path / "home"),
                              "--upstream", "none"], env={"OLLAMA_KV_CACHE_TYPE": "q8_0"})
    try:
        client = ollama.Client(host=url)

        def chat(question: str):
            return client.chat(model="wide", messages=[{"role": "user", "content": question}],
                               options={"temperature": 0, "num_predict": 8})

        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(chat, QUESTIONS))
        assert all(r.done and r.eval_count == 8 for r in replies)
        assert client.show("wide") is not None
    finally:
        stop_server(proc)
