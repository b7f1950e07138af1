"""Pad the rows of CPU matmuls to the shapes OpenBLAS computes fast (Linux x86-64 only).

MLX computes a linear layer as `x @ W.T`: one row per token in the step, so a decoding batch
of B sequences multiplies B rows by every weight matrix. OpenBLAS's x86-64 sgemm kernels work
on panels of 4 such rows per thread; a row count past a multiple of the panels runs its
remainder on a slow edge path. Measured on an idle 2-core AMD EPYC with 2 OpenBLAS threads
(`scripts/bench_rowpad.py`, SmolLM2-135M, JSON in docs/bench/): its 90 MLP matmuls, weights
streamed from memory, take 26.9 / 30.9 / 25.1 ms for 5 / 6 / 7 rows and 18.7 ms for 8; a
whole decoding step takes 67 / 80 / 70 ms for 5 / 6 / 7 sequences and 61 ms for 8. Decoding
streams every weight from memory whatever the row count, so rows of zeros up to the fast
count cost next to nothing, and the batch runs at the fast shape: 61 / 60 / 64 ms padded.
A batch of 7 is what a batch of 8 becomes when its first request ends. Counts of rows that
blas_rows.py's few-row kernel computes (1-16 by default) are never padded: its cost grows with
the rows, with no slow edge, and it is faster still (SmolLM2's step matmuls on an idle 2-core
Xeon: 23 / 36 / 52 ms for 1 / 8 / 16 rows against OpenBLAS's 55 / 59 / 74).

Installed on a model the engine loaded (its `nn.Linear` and `nn.Embedding` layers, whose
`as_linear` is a tied output head, become the subclasses below, sharing the same weights).
Only float32 layers, only where MLX runs on the CPU with OpenBLAS on x86-64: Metal (macOS), a
CUDA build, half-precision and quantized layers and other BLAS libraries are left alone.
`MLX_BRIDGE_ROW_PAD=off` turns it off. Engine thread only.

Only OpenBLAS's AVX2 kernels (its cores Haswell, Zen, ...) have that edge. Its AVX-512 cores
(SkylakeX, Cooperlake, SapphireRapids: an AMD EPYC Zen 4 runs SkylakeX) take 25-30 ms for the
same matmuls at any count of 1-8 rows, and padding made decoding steps of 3-4 sequences
0.86-0.90x as fast and 8 clients 0.91-1.04x (`scripts/bench_rowpad.py`, two idle runs): there
the rows are left as they are unless `MLX_BRIDGE_ROW_PAD=on` asks for padding anyway.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from bridge.engine.blas import BlasInfo
from bridge.envvars import env_on, env_str

log = logging.getLogger(__name__)

PANEL = 4  # rows of one OpenBLAS x86-64 sgemm panel
# OpenBLAS cores (openblas_get_corename, lower case) whose sgemm has no slow edge to pad past.
FLAT_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


class RowPadding:
    """The row counts a model's matmuls are padded to; follows OpenBLAS's thread count (the
    engine's BLAS follower may change it while the process runs)."""

    def __init__(self, threads: int, gemv_rows: int = 0) -> None:
        self.block, self.least = rule_for(threads)
        self.gemv_rows = gemv_rows  # counts the few-row kernel computes (blas_rows): not padded

    def follow(self, threads: int) -> None:
        self.block, self.least = rule_for(threads)

    def rows(self, n: int) -> int:
        """The row count to compute `n` rows as: `n` itself where that is as fast."""
        over = n % self.block
        if n <= max(1, self.gemv_rows) or over == 0 or over < self.least:
            return n  # few rows run on the bridge's few-row kernel (engine/blas_rows.c)
        return n - over + self.block


def rule_for(threads: int) -> tuple[int, int]:
    """(block, least): rows are padded up to a multiple of `block` when at least `least` rows
    are past the last multiple. Measured (scripts/bench_rowpad.py, SmolLM2, idle 2 cores):
    with 2 threads whole decoding steps of 3..7 sequences gain 5-34% padded to 8, 2 and
    9..10 sequences gain nothing (the padding's copy costs what it saves); with 1 thread
    multiples of 4 are the fast counts. More threads than 2 keep the 2-thread rule (not
    measured: this machine has 2 cores; while decoding, extra rows cost next to nothing)."""
    return (PANEL, 1) if threads <= 1 else (2 * PANEL, 3)


def padding_for(info: BlasInfo, threads: int | None, device: str) -> RowPadding | None:
    """A RowPadding where MLX's matmuls run on OpenBLAS's AVX2 kernels on the CPU of x86-64
    Linux (any OpenBLAS core with MLX_BRIDGE_ROW_PAD=on), else None (a GPU, e.g. `mlx[cuda]`
    on Linux, runs MLX's own kernels, where extra rows cost)."""
    if device != "cpu":
        return None
    if not env_on(os.environ, "MLX_BRIDGE_ROW_PAD"):  # off, 0, false, no
        return None
    asked = env_str(os.environ, "MLX_BRIDGE_ROW_PAD") is not None  # set, and not off: on
    if not sys.platform.startswith("linux") or platform.machine().lower() not in (
            "x86_64", "amd64"):
        return None
    if info.name != "openblas":
        return None
    if info.detail.lower() in FLAT_CORES and not asked:
        log.info("matmul rows not padded: OpenBLAS core %s has no slow edge", info.detail)
        return None
    return RowPadding(threads or 1, info.gemv_rows)


def install(model: Any, padding: RowPadding) -> int:
    """Make `model`'s plain float32 linear layers (and embeddings, for a tied output head) pad
    their rows; the weights are shared, not copied. Returns how many layers now pad."""
    from mlx.utils import tree_map

    swapped = 0

    def swap(module: Any) -> Any:
        nonlocal swapped
        if module.get("weight") is None or module["weight"].dtype != mx.float32:
            return module  # half precision runs on MLX's own kernels: extra rows cost there
        if type(module) is nn.Linear:
            swapped += 1
            return PaddedLinear(module, padding)
        if type(module) is nn.Embedding:
            swapped += 1
            return PaddedEmbedding(module, padding)
        return module

    model.update_modules(tree_map(swap, model.leaf_modules(), is_leaf=nn.Module.is_module))
    return swapped


def try_install(model: Any, padding: RowPadding, what: str) -> bool:
    """install(), logged; a failure is a warning, never a failed load (padding only speeds)."""
    try:
        layers = install(model, padding)
    except Exception as exc:  # noqa: BLE001 - the model works unpadded
        log.warning("matmul rows not padded %s error=%r", what, exc)
        return False
    log.info("matmul rows padded %s layers=%d block=%d", what, layers, padding.block)
    return True


def padded(x: mx.array, padding: RowPadding, project: Callable[[mx.array], mx.array]) -> mx.array:
    """`project(x)`, computed on x's rows padded with zeros to `padding`'s row count."""
    width = x.shape[-1]
    n = x.size // width if width else 0
    target = padding.rows(n)
    if target == n:
        return project(x)
    flat = mx.concatenate([x.reshape(n, width), mx.zeros((target - n, width), x.dtype)])
    out = project(flat)[:n]
    return out.reshape(*x.shape[:-1], out.shape[-1])


class PaddedLinear(nn.Linear):
    """An nn.Linear (the same weight and bias) whose rows are padded (RowPadding)."""

    def __init__(self, linear: nn.Linear, padding: RowPadding) -> None:
        nn.Module.__init__(self)  # not Linear's: it would draw a random weight first
        self.weight = linear.weight
        if "bias" in linear:
            self.bias = linear.bias
        self.padding = padding

    def __call__(self, x: mx.array) -> mx.array:
        if x.size == x.shape[-1]:  # one row (a lone stream's step): nothing to pad, no detour
            return super().__call__(x)
        return padded(x, self.padding, super().__call__)


class PaddedEmbedding(nn.Embedding):
    """An nn.Embedding (the same table) whose `as_linear`, a tied output head, pads its rows."""

    def __init__(self, embedding: nn.Embedding, padding: RowPadding) -> None:
        nn.Module.__init__(self)
        self.weight = embedding.weight
        self.padding = padding

    def as_linear(self, x: mx.array) -> mx.array:
        if x.size == x.shape[-1]:
            return super().as_linear(x)
        return padded(x, self.padding, super().as_linear)
