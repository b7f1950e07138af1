"""Attention and log-softmax with a fast exponential where MLX runs on an x86-64 CPU (Linux).

mlx-lm's models call `mx.fast.scaled_dot_product_attention`; on the CPU, MLX computes it as
matmuls around a softmax, and the softmax is almost all `exp`. The x86-64 MLX wheel computes
`exp` one element at a time and calls libm's `fmaf` for each of its six fused multiply-adds
(it is not built for FMA), so one exp costs ~9.5 ns (perf: half the time is in `__fmaf_fma3`).
Measured on an idle 2-core AMD EPYC (`scripts/bench_attention.py`, JSON in docs/bench/): the
attention of 20 new tokens over a 424-token context takes 0.95 ms per layer, 29 ms of a
SmolLM2 turn's prefill, and grows with the context both for prefill and for every decoding
step of a batch.

Here the same polynomial MLX uses (2^n times a degree-6 polynomial of the fraction) is written
as MLX array operations and fused by `mx.compile` into one vectorizable kernel (MLX compiles it
with the system's g++ when the model loads; without g++ it runs unfused, still faster), and
attention is the same grouped-query matmuls and softmax as MLX's CPU fallback. Outputs agree
with MLX's to ~1e-7 (float32 rounding); terms below e^-42 of a row's largest are 0 here.

Fewer scores than SMALL, or a layer so narrow that building the graph costs more than its
exponentials (WORK_FLOOR: a tiny model decoding), stay with MLX's one call.

Installed into mlx-lm's model modules when a model loads (their module-level
`scaled_dot_product_attention`, which mlx-lm's attention layers call), and into mlx-lm's
decoding loops' log-softmax over the vocabulary (`logsumexp`: 3.8 ms of a batch-of-8 SmolLM2
step). Falls back to mlx-lm's
own for quantized KV caches, attention sinks, half precision and masks of unusual shapes.
Only where MLX runs on the CPU of x86-64 Linux: Metal (macOS) and CUDA keep MLX's fused
kernels. `MLX_BRIDGE_FAST_ATTENTION=off` turns it off. Engine thread only.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
import types
from typing import Any

import mlx.core as mx

from bridge.envvars import env_on

log = logging.getLogger(__name__)

LOG2E = 1.4426950408889634
ROUND = 12582912.0  # 1.5 * 2^23: adding and subtracting it rounds a float to an integer
FLOOR = -42.0  # e^-42 < 2^-60: below this a softmax term is 0 (2^-n is built in int64)
# Fewer scores than this (one sequence decoding over a short context) are as fast in MLX's one
# call as in the dozen operations here, whose graph costs ~10 us a layer to build.
SMALL = 2048
# Query rows x the layer's width squared (its matmuls' work) below this: the layer computes
# faster than Python builds its graph, so the engine thread, not MLX's worker, bounds the step,
# and the dozen extra operations only add to it (a 64-wide tiny model decoding over 2,000
# tokens: +90 us a token). SmolLM2 (576 wide) is past it from one row on.
WORK_FLOOR = 256 * 256
# A log-softmax over fewer values than this is cheaper in MLX's one call than in the ~8 graph
# operations here (a tiny model's 384-token vocabulary: +30 us a token).
SMALL_VOCAB = 8192
CHUNK = 1 << 17  # scores per block of a long prompt's queries (512 KiB of float32)
POLY = (1.535336188319500e-4, 1.339887440266574e-3, 9.618437357674640e-3,
        5.550332471162809e-2, 2.402264791363012e-1, 6.931472028550421e-1, 1.0)  # MLX's own


def wanted(device: str) -> bool:
    """Whether attention should use the fast exponential: MLX on the CPU of x86-64 Linux."""
    if device != "cpu":
        return False
    if not env_on(os.environ, "MLX_BRIDGE_FAST_ATTENTION"):  # off, 0, false, no
        return False
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def _exp_nonpositive(x: mx.array) -> mx.array:
    """e^x for x <= 0 (a softmax's shifted scores), as MLX's exp computes it."""
    t = mx.maximum(x, FLOOR) * LOG2E
    n = (t + ROUND) - ROUND  # the nearest integer
    f = t - n  # in [-0.5, 0.5]
    p = mx.array(POLY[0], mx.float32)
    for c in POLY[1:]:
        p = p * f + c
    two_n = mx.left_shift(mx.array(1, mx.int64), (-n).astype(mx.int64)).astype(mx.float32)
    return mx.where(x < FLOOR, 0.0, p / two_n)


exp_nonpositive = mx.compile(_exp_nonpositive, shapeless=True)


def _shifted_exp(x: mx.array, top: mx.array) -> mx.array:
    return _exp_nonpositive(x - top)


shifted_exp = mx.compile(_shifted_exp, shapeless=True)  # the subtraction in the same kernel


def logsumexp(a: mx.array, axis: Any = None, keepdims: bool = False,
              stream: Any = None) -> mx.array:
    """`mx.logsumexp` with the fast exponential, for the log-softmax of logits: float32 over the
    last axis (or over all of an array whose other axes are 1, as generate_step asks); anything
    else, and fewer than SMALL_VOCAB values, is MLX's. A batch of 8 SmolLM2 rows (8 x 49,152):
    1.2 against 3.8 ms."""
    last = a.ndim > 0 and (axis in (-1, a.ndim - 1) or (axis is None and a.size == a.shape[-1]))
    if stream is not None or a.dtype != mx.float32 or not last or a.size < SMALL_VOCAB:
        return mx.logsumexp(a, axis=axis, keepdims=keepdims, stream=stream)
    top = mx.max(a, axis=-1, keepdims=True)
    infinite = mx.isinf(top)
    finite = mx.where(infinite, 0.0, top)  # a row of -inf sums to 0 terms, not NaN
    out = mx.where(infinite, top,
                   finite + mx.log(mx.sum(shifted_exp(a, finite), axis=-1, keepdims=True)))
    if axis is None:
        return out.reshape([1] * a.ndim if keepdims else [])
    return out if keepdims else out.squeeze(-1)


def _fast_mx() -> types.ModuleType:
    """mlx.core with `logsumexp` above: what mlx-lm's decoding loops see as `mx`. A copy of its
    namespace, so each `mx.` lookup in their per-token code stays a plain dict read."""
    fast = types.ModuleType(mx.__name__, mx.__doc__)
    fast.__dict__.update({k: v for k, v in vars(mx).items() if not k.startswith("__")})
    fast.logsumexp = logsumexp  # type: ignore[attr-defined]
    return fast


def softmax(scores: mx.array) -> mx.array:
    """Softmax over the last axis (float32)."""
    e = exp_nonpositive(scores - mx.max(scores, axis=-1, keepdims=True))
    return e / mx.sum(e, axis=-1, keepdims=True)


def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float,
              mask: Any, sinks: mx.array | None = None) -> mx.array:
    """mlx-lm's `scaled_dot_product_attention`, with the fast softmax where it applies."""
    if not _pays(queries, keys) or not _covered(queries, keys, values, cache, mask, sinks):
        extra = {} if sinks is None else {"sinks": sinks}  # older mlx-lm has no `sinks`
        return _mlx_lm_attention()(queries, keys, values, cache, scale=scale, mask=mask,
                                   **extra)
    heads, n = queries.shape[1], queries.shape[2]
    kv_heads, s = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    step = max(1, CHUNK // (group * s))
    if step >= n:
        return _attend(queries * scale, keys, values, mask, heads, kv_heads)
    # A long prompt: its queries in blocks, so each block's scores stay in the CPU's caches;
    # a causal block also skips the keys after its last query.
    parts = []
    for start in range(0, n, step):
        end = min(n, start + step)
        q = queries[:, :, start:end] * scale
        if isinstance(mask, str):
            seen = s - n + end
            parts.append(_attend(q, keys[:, :, :seen], values[:, :, :seen], mask, heads,
                                 kv_heads))
        else:
            part_mask = mask if mask is None or mask.shape[-2] == 1 else mask[..., start:end, :]
            parts.append(_attend(q, keys, values, part_mask, heads, kv_heads))
    return mx.concatenate(parts, axis=2)


def _pays(queries: mx.array, keys: Any) -> bool:
    """Whether the fast path saves more than it costs: enough scores to compute (their
    exponentials), in a layer wide enough that MLX's worker, not the graph's building, is what
    the step waits for."""
    if not isinstance(keys, mx.array):  # a quantized cache's (data, scales, biases)
        return False
    batch, heads, n, d = queries.shape
    return (heads * n * keys.shape[-2] * batch >= SMALL
            and batch * n * (heads * d) ** 2 >= WORK_FLOOR)


def _attend(queries: mx.array, keys: mx.array, values: mx.array, mask: Any, heads: int,
            kv_heads: int) -> mx.array:
    """Attention of (already scaled) queries over all of keys and values."""
    b, _, n, d = queries.shape
    s = keys.shape[2]
    group = heads // kv_heads
    # A query head's group shares one KV head: its rows stack into one matmul per KV head.
    scores = queries.reshape(b, kv_heads, group * n, d) @ keys.swapaxes(-1, -2)
    if mask is not None:
        scores = _masked(scores.reshape(b, kv_heads, group, n, s), mask, heads, kv_heads)
        scores = scores.reshape(b, kv_heads, group * n, s)
    # (values may be narrower than keys: multi-head latent attention)
    return (softmax(scores) @ values).reshape(b, heads, n, values.shape[-1])


def _covered(queries: mx.array, keys: Any, values: Any, cache: Any, mask: Any,
             sinks: Any) -> bool:
    """Plain float32 keys (a quantized cache hands (data, scales, biases) tuples), no sinks,
    query heads in whole groups per KV head, and a mask shape mlx-lm's models pass."""
    if (sinks is not None or hasattr(cache, "bits") or not isinstance(keys, mx.array)
            or not isinstance(values, mx.array)
            or {queries.dtype, keys.dtype, values.dtype} != {mx.float32}):
        return False
    return queries.shape[1] % keys.shape[1] == 0 and _plain_mask(mask, queries.shape[1])


def _plain_mask(mask: Any, heads: int) -> bool:
    """None, "causal", (queries, keys) or (batch, heads or 1, queries, keys): the shapes
    mlx-lm's models pass; anything else goes to mlx-lm's own attention."""
    if mask is None or isinstance(mask, str):
        return mask in (None, "causal")
    return mask.ndim == 2 or (mask.ndim == 4 and mask.shape[1] in (1, heads))


def _masked(scores: mx.array, mask: Any, heads: int, kv_heads: int) -> mx.array:
    """Scores shaped (batch, kv heads, group, queries, keys) with the mask applied."""
    n, s = scores.shape[-2], scores.shape[-1]
    if isinstance(mask, str):  # "causal": the queries are the last n of the s positions
        keep = mx.arange(s)[None] <= mx.arange(s - n, s)[:, None]
        return mx.where(keep, scores, -mx.inf)
    if mask.ndim == 4:  # (batch, heads or 1, queries, keys)
        if mask.shape[1] == heads:
            mask = mask.reshape(mask.shape[0], kv_heads, heads // kv_heads, *mask.shape[2:])
        else:
            mask = mx.expand_dims(mask, 2)
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, -mx.inf)
    return scores + mask.astype(scores.dtype)


def _mlx_lm_attention() -> Any:
    from mlx_lm.models import base

    return base.scaled_dot_product_attention


def install() -> int:
    """Point every imported mlx-lm model module's attention here, and mlx-lm's decoding loops'
    log-softmax (`mx.logsumexp` in mlx_lm.generate: every token of every sequence, over the
    whole vocabulary) at `logsumexp`; returns how many modules changed (idempotent: a model
    loaded later brings its module, so each load installs again)."""
    generate = importlib.import_module("mlx_lm.generate")  # (mlx_lm.generate is also a function)
    original = _mlx_lm_attention()
    changed = 0
    if generate.mx is mx:
        generate.mx = _fast_mx()  # type: ignore[assignment]
        changed += 1
    for name, module in list(sys.modules.items()):
        if (name.startswith("mlx_lm.models.") and name != "mlx_lm.models.base"
                and module is not None
                and getattr(module, "scaled_dot_product_attention", None) is original):
            module.scaled_dot_product_attention = attention
            changed += 1
    return changed


def compile_now() -> None:
    """Run the fast path once on a small input: MLX compiles the fused exp (g++, ~2 s the first
    time on a machine, then from its disk cache) here, at the load, not in a user's request (the
    load's warm-up prompt is too short to take the fast path)."""
    keys = mx.zeros((1, 1, SMALL, 8), mx.float32)  # 2 query heads x 2,048 keys
    mx.eval(_attend(mx.zeros((1, 2, 1, 8), mx.float32), keys, keys, None, 2, 1),
            logsumexp(keys[0, 0], axis=-1))


def try_install(what: str) -> bool:
    """install() and compile_now(), logged; a failure is a warning, never a failed load (it
    only speeds)."""
    try:
        changed = install()
        compile_now()
    except Exception as exc:  # noqa: BLE001 - the model works with mlx-lm's attention
        log.warning("fast attention not installed %s error=%r", what, exc)
        return False
    if changed:
        log.info("fast attention installed %s modules=%d", what, changed)
    return True
