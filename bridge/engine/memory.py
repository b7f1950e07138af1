"""Memory the system can still give, and handing freed memory back. Engine thread only."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import sys
from collections.abc import Callable
from typing import Any


def available_memory() -> int:
    """Bytes the system can still give this process (0: unknown). Engine thread only."""
    if sys.platform == "darwin":
        with contextlib.suppress(Exception):
            import mlx.core as mx

            if mx.metal.is_available():
                limit = mx.device_info().get("max_recommended_working_set_size", 0)
                return max(0, int(limit) - mx.get_active_memory())
        return 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def free_memory(idle: bool = False) -> None:
    """Collect dropped arrays and return MLX's buffer cache (mlx-lm #1757); `idle` (no model
    is loaded): also the free tops of the heaps MLX computes in (below)."""
    import mlx.core as mx

    gc.collect()
    mx.synchronize()  # no async work may outlive the arrays (or the engine thread)
    if idle:
        _trim_mlx_heaps(mx)
    mx.clear_cache()
    _malloc_trim()


def _trim_mlx_heaps(mx: Any) -> None:
    """glibc shrinks a thread arena's top only when a large block is freed in that arena, and
    malloc_trim never does: the KV caches and activations a finished request freed while the
    model was loaded (heap memory kept for reuse then) stay resident in the arena of the
    thread MLX computes on until it frees a block again. One array of 256 kB computed and
    dropped there does it, now that the "idle" phase has lowered the threshold."""
    block = mx.zeros((1 << 16,), dtype=mx.float32) + 1
    mx.eval(block)
    del block
    mx.synchronize()


# glibc's mallopt parameters, and the values each phase sets (engine/models.py switches).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_PHASES: dict[str, dict[int, int]] = {
    # Reading a model: its weight matrices (256 kB and more) are mapped each on its own, so
    # they go back to the system whenever they are freed, however late (glibc's dynamic
    # threshold put them in the heaps, where an unload's frees could stay resident).
    "load": {_M_MMAP_THRESHOLD: 256 << 10, _M_TRIM_THRESHOLD: 64 << 20},
    # Serving: the ceiling glibc's dynamic thresholds climb to, fixed: activations and KV
    # caches come from the heaps, and a heap keeps up to 64 MB of free top for the next
    # steps (with 256 kB here 8 clients on SmolLM2 read 67-74 tok/s, 80-93 without, single
    # runs: docs/performance.md, rerun XIV).
    "serve": {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20},
    # No model loaded: glibc's defaults, fixed: a heap's free top goes back as it is freed,
    # in every thread's arena (malloc_trim never shrinks a thread arena's top: an unload left
    # up to 64 MB of one resident, at random: 1.07-1.29x the idle process).
    "idle": {_M_MMAP_THRESHOLD: 128 << 10, _M_TRIM_THRESHOLD: 128 << 10},
}


def allocator_phase(phase: str) -> None:
    """Set glibc's thresholds for `phase` ("load", "serve" or "idle": see _PHASES); elsewhere
    (macOS, musl) nothing."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        for param, value in _PHASES[phase].items():
            mallopt(param, value)


def _malloc_trim() -> None:
    """glibc keeps freed heap pages (tokenizer, Python objects) mapped; hand them back."""
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


@functools.cache  # once per process: each CDLL makes a new ctypes class, cyclic garbage
def _libc_function(name: str) -> Callable[[int], int] | Callable[[int, int], int] | None:
    """glibc's `name` (malloc_trim, mallopt), or None (not Linux, or not glibc: musl has
    neither).

    Looked up once: a new CDLL per unload left a few kB of cyclic garbage (a ctypes class and
    its function objects) made after the unload's collection, which kept a pymalloc arena
    in use until the next one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
