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
    is loaded): also the free top of the engine thread's heap (below)."""
    import mlx.core as mx

    gc.collect()
    mx.synchronize()  # no async work may outlive the arrays (or the engine thread)
    mx.clear_cache()
    if idle:
        _trim_heap_top()
    _malloc_trim()


# A block glibc serves from the calling thread's heap (under the idle phase's 128 kB mmap
# threshold) and whose free is large enough (64 kB, glibc's FASTBIN_CONSOLIDATION_THRESHOLD)
# to make it trim that heap.
_TRIM_BLOCK = 96 << 10


def _trim_heap_top() -> None:
    """Hand back the free top of this thread's glibc heap. Engine thread only.

    MLX computes the engine's arrays in the engine thread's arena; the KV caches and
    activations a finished request freed went back to its top, which glibc keeps while serving
    (64 MB trim threshold) and malloc_trim never shrinks in a thread's arena: only a large free
    in that arena does, once the "idle" phase has lowered the threshold. Without it an unload
    after 8 clients left the arena's last 64 MB heap resident two times in five (127 -> 207 MB;
    seen with gdb: a malloc/free of 100 kB on this thread gave the 65 MB back). The block is
    malloc'd directly: an MLX array would come from MLX's own buffer cache, or above the
    threshold be mapped on its own, and trim nothing."""
    malloc, free = _libc_function("malloc"), _libc_function("free")
    if malloc is not None and free is not None:
        free(malloc(_TRIM_BLOCK))


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
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc, or None (not Linux, or musl: no malloc_trim or mallopt).

    Loaded once: a new CDLL per unload left a few kB of cyclic garbage (a ctypes class and
    its function objects) made after the unload's collection, which kept a pymalloc arena
    in use until the next one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


@functools.cache  # its argument and result types are set once
def _libc_function(name: str) -> Callable[..., Any] | None:
    """glibc's `name` (malloc_trim, mallopt, malloc, free), or None where _glibc() is None."""
    libc = _glibc()
    function = getattr(libc, name, None) if libc is not None else None
    if name == "malloc" and function is not None:  # a pointer, not ctypes' default int (32 bits)
        function.restype, function.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    elif name == "free" and function is not None:
        function.restype, function.argtypes = None, [ctypes.c_void_p]
    return function
