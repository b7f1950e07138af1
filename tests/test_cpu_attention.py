"""Attention and log-softmax with the fast exponential (bridge/engine/cpu_attention.py): its
exp, attention and logsumexp equal MLX's to float32 rounding for every mask and head layout and
every call mlx-lm makes, it falls back where it does not apply, and a real engine installs it
and answers as before."""

from __future__ import annotations

import importlib

import mlx.core as mx
import numpy as np
import pytest

from bridge.engine import Engine, blas, cpu_attention
from bridge.engine.cpu_attention import attention, exp_nonpositive, install, logsumexp, wanted

from .test_batching import run_alone

blas.enable()  # the engine's BLAS, bound before this file's first matmul (see test_rowpad)


def mlx_attention(q, k, v, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)


def test_the_exponential_equals_mlx_exp_to_float32_rounding():
    x = mx.concatenate([mx.linspace(-41.9, 0.0, 200_001), mx.array([0.0, -1e-30, -5e-8])])
    ours, theirs = np.array(exp_nonpositive(x)), np.array(mx.exp(x))
    assert np.max(np.abs(ours - theirs) / theirs) < 3e-7
    assert exp_nonpositive(mx.array([0.0])).item() == 1.0
    # Far below a row's largest score a term is 0, as in float32 after the softmax's division.
    assert np.array(exp_nonpositive(mx.array([-42.5, -100.0, -mx.inf]))).tolist() == [0, 0, 0]
    assert np.isnan(exp_nonpositive(mx.array([mx.nan])).item())


@pytest.fixture
def fast_only(monkeypatch):
    """Fail if attention hands the call to mlx-lm: these tests check the fast path itself."""
    def refuse():
        raise AssertionError("handed to mlx-lm's attention")

    monkeypatch.setattr(cpu_attention, "_mlx_lm_attention", refuse)
    monkeypatch.setattr(cpu_attention, "WORK_FLOOR", 0)  # these layers are 64-96 wide


def _qkv(batch, heads, kv_heads, n, s, seed=0):
    mx.random.seed(seed)
    shape = (batch, kv_heads, s, 16)
    return (mx.random.normal((batch, heads, n, 16)) * 3, mx.random.normal(shape) * 3,
            mx.random.normal(shape))


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "n", "s"), [
    (1, 4, 4, 1, 600),    # decoding one sequence over a long context
    (3, 6, 2, 1, 140),    # a decoding batch, grouped-query heads
    (1, 6, 2, 24, 24),    # a prompt from scratch
    (2, 6, 3, 5, 70),     # new tokens over a cached context
])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive", "2d", "per-head"])
def test_attention_equals_mlx_for_each_mask(fast_only, batch, heads, kv_heads, n, s, mask_kind):
    q, k, v = _qkv(batch, heads, kv_heads, n, s)
    causal = mx.arange(s)[None] <= mx.arange(s - n, s)[:, None]
    left_pad = mx.arange(s)[None, None, None] >= mx.array([0, 3, 1])[:batch, None, None, None]
    mask = {"none": None, "causal": "causal", "2d": causal,
            "bool": causal & left_pad,  # what a BatchKVCache passes: left padding and causal
            "additive": mx.where(causal & left_pad, 0.0, -1e9),
            "per-head": mx.broadcast_to(causal, (batch, heads, n, s))}[mask_kind]
    expected = mlx_attention(q, k, v, mask)
    got = attention(q, k, v, None, 0.125, mask)
    assert got.shape == expected.shape
    assert np.allclose(np.array(got), np.array(expected), atol=2e-6, rtol=1e-5)


def test_values_narrower_than_keys_as_in_latent_attention(fast_only):
    q, k, _ = _qkv(2, 4, 4, 6, 90)
    v = mx.random.normal((2, 4, 90, 8))  # keys 16 wide, values 8
    got = attention(q, k, v, None, 0.125, "causal")
    assert got.shape == (2, 4, 6, 8)
    assert np.allclose(np.array(got), np.array(mlx_attention(q, k, v, "causal")), atol=2e-6,
                       rtol=1e-5)


def test_small_attention_stays_with_mlx(monkeypatch):
    """A single sequence decoding over a short context: MLX's one call is as fast."""
    monkeypatch.setattr(cpu_attention, "_mlx_lm_attention", lambda: lambda *a, **k: "mlx-lm")
    q, k, v = _qkv(1, 9, 3, 1, 100)  # 900 scores
    assert attention(q, k, v, None, 0.125, None) == "mlx-lm"
    q, k, v = _qkv(8, 9, 3, 1, 100)  # a batch of 8: 7,200
    assert attention(q, k, v, None, 0.125, None) != "mlx-lm"


def test_a_narrow_layer_decoding_stays_with_mlx(monkeypatch):
    """A 64-wide layer (the tiny model's) computes faster than its graph is built: one row over
    2,000 keys (8,000 scores) stays in MLX's one call; a prompt's 24 rows take the fast path."""
    monkeypatch.setattr(cpu_attention, "_mlx_lm_attention", lambda: lambda *a, **k: "mlx-lm")
    q, k, v = _qkv(1, 4, 2, 1, 2000)
    assert attention(q, k, v, None, 0.125, None) == "mlx-lm"
    q, k, v = _qkv(1, 4, 2, 24, 2000)
    assert attention(q, k, v, None, 0.125, "causal") != "mlx-lm"
    q, k, v = _qkv(1, 36, 12, 1, 100)  # 576 wide (SmolLM2's 9 x 64 as 36 x 16), one row
    assert attention(q, k, v, None, 0.125, None) != "mlx-lm"


@pytest.mark.parametrize("mask_kind", ["causal", "bool"])
def test_a_long_prompt_in_blocks_equals_mlx(fast_only, monkeypatch, mask_kind):
    """Blocks of queries (a causal block skips the keys after its last query) change nothing."""
    monkeypatch.setattr(cpu_attention, "CHUNK", 1000)  # blocks of 1000 // (3 * 80) = 4 queries
    q, k, v = _qkv(1, 6, 2, 30, 80)
    causal = mx.arange(80)[None] <= mx.arange(50, 80)[:, None]
    mask = "causal" if mask_kind == "causal" else causal[None, None]
    got = attention(q, k, v, None, 0.125, mask)
    assert np.allclose(np.array(got), np.array(mlx_attention(q, k, v, mask)), atol=2e-6,
                       rtol=1e-5)


def test_what_it_does_not_cover_goes_to_mlx_lm(monkeypatch):
    calls = []

    def recorder(*args, **kwargs):
        calls.append(kwargs)
        return "mlx-lm"

    monkeypatch.setattr(cpu_attention, "_mlx_lm_attention", lambda: recorder)
    monkeypatch.setattr(cpu_attention, "WORK_FLOOR", 0)
    q, k, v = _qkv(1, 4, 2, 3, 200)

    class QuantizedCache:
        bits, group_size = 8, 64

    assert attention(q, k, v, QuantizedCache(), 0.125, None) == "mlx-lm"
    assert attention(q, k, v, None, 0.125, None, sinks=mx.zeros((4,))) == "mlx-lm"
    assert attention(q.astype(mx.float16), k, v, None, 0.125, None) == "mlx-lm"
    assert attention(q, k, v, None, 0.125, mx.ones((1, 3, 200), mx.bool_)) == "mlx-lm"  # 3-D
    assert attention(q, k, v, None, 0.125, mx.ones((200,), mx.bool_)) == "mlx-lm"  # 1-D
    assert attention(q, k, v, None, 0.125, "window") == "mlx-lm"
    assert attention(q, (k, k, k), (v, v, v), object(), 0.125, None) == "mlx-lm"  # quantized
    assert len(calls) == 7
    assert attention(q, k, v, None, 0.125, None) is not None and len(calls) == 7


def test_it_applies_only_on_the_cpu_of_x86_64_linux(monkeypatch):
    monkeypatch.delenv("MLX_BRIDGE_FAST_ATTENTION", raising=False)
    monkeypatch.setattr(cpu_attention.sys, "platform", "linux")
    monkeypatch.setattr(cpu_attention.platform, "machine", lambda: "x86_64")
    assert wanted("cpu")
    assert not wanted("gpu")  # mlx[cuda]: MLX's own kernels
    monkeypatch.setenv("MLX_BRIDGE_FAST_ATTENTION", "off")
    assert not wanted("cpu")
    monkeypatch.setenv("MLX_BRIDGE_FAST_ATTENTION", "1")
    assert wanted("cpu")
    monkeypatch.setattr(cpu_attention.platform, "machine", lambda: "aarch64")
    assert not wanted("cpu")
    monkeypatch.setattr(cpu_attention.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(cpu_attention.sys, "platform", "darwin")  # Metal: fused kernels
    assert not wanted("cpu") and not wanted("gpu")


@pytest.mark.parametrize("axis,keepdims", [(-1, True), (-1, False), (1, True), (None, True),
                                           (None, False)])
@pytest.mark.parametrize("rows", [1, 8])
def test_logsumexp_equals_mlx(rows, axis, keepdims):
    """As mlx-lm's loops call it: a batch's rows over the last axis, generate_step's one row
    over all of it; with masked (-inf) logits, a row all -inf and a +inf."""
    logits = mx.random.normal((rows, 49152), key=mx.random.key(rows)) * 8
    logits[0, :100] = -mx.inf  # a grammar's masked tokens
    if rows > 1:
        logits[1] = -mx.inf
        logits[2, 7] = mx.inf
    if axis is None and rows > 1:
        logits = logits[:1]
    want = mx.logsumexp(logits, axis=axis, keepdims=keepdims)
    got = logsumexp(logits, axis=axis, keepdims=keepdims)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.allclose(np.array(got), np.array(want), rtol=1e-6, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("case", ["half", "first-axis", "whole-batch", "scalar"])
def test_logsumexp_leaves_the_rest_to_mlx(case):
    a = mx.random.normal((4, 300), key=mx.random.key(3))
    a, axis = {"half": (a.astype(mx.bfloat16), -1), "first-axis": (a, 0),
               "whole-batch": (a, None), "scalar": (a[0, 0], None)}[case]
    assert mx.array_equal(logsumexp(a, axis=axis), mx.logsumexp(a, axis=axis)).item()


def test_install_points_model_modules_at_it_and_leaves_mlx_lm_base_alone(monkeypatch):
    import mlx_lm.models.base as base
    import mlx_lm.models.llama as llama

    generate = importlib.import_module("mlx_lm.generate")
    monkeypatch.setattr(llama, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    monkeypatch.setattr(generate, "mx", mx)
    assert install() >= 2
    assert llama.scaled_dot_product_attention is attention
    assert base.scaled_dot_product_attention is not attention
    assert generate.mx.logsumexp is logsumexp  # mlx-lm's decoding loops' log-softmax
    assert generate.mx.array is mx.array and generate.mx.eval is mx.eval  # the rest is MLX
    assert install() == 0  # idempotent


def test_greedy_generation_is_the_same_with_it(monkeypatch, tiny_model_dir):
    import mlx_lm.models.base as base
    import mlx_lm.models.llama as llama
    from mlx_lm import load, stream_generate

    generate = importlib.import_module("mlx_lm.generate")

    model, tokenizer = load(str(tiny_model_dir))
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog " * 6)

    def greedy() -> list[int]:
        return [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=40)]

    monkeypatch.setattr(llama, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    monkeypatch.setattr(generate, "mx", mx)
    plain = greedy()
    install()
    assert llama.scaled_dot_product_attention is attention and generate.mx is not mx
    assert greedy() == plain


@pytest.fixture
def fast_engine(monkeypatch):
    monkeypatch.setattr(cpu_attention, "wanted", lambda device: True)  # as on x86-64 Linux
    eng = Engine(keep_alive=300, max_loaded=2, max_queue=16, num_parallel=8, prompt_cache_bytes=0)
    eng.start()
    yield eng
    eng.stop()


def test_a_real_engine_installs_it_at_load_and_answers(fast_engine, tiny_model_dir):
    import mlx_lm.models.llama as llama

    answers = run_alone(fast_engine, tiny_model_dir, ["hello", "Name a colour"], n=12)
    assert all(count > 0 for _, count in answers)
    loaded = next(iter(fast_engine.cache.models.values()))
    assert loaded.fast_attention and fast_engine.health()["fast_attention"] is True
    assert llama.scaled_dot_product_attention is attention
