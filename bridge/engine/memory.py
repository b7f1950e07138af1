"""Memory the system can still give, and handing freed memory back. Engine thread only."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import sys
from collections.abc import Callable


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


def free_memory() -> None:
    """Collect dropped arrays and return MLX's buffer cache (mlx-lm #1757)."""
    import mlx.core as mx

    gc.collect()
    mx.synchronize()  # no async work may outlive the arrays (or the engine thread)
    mx.clear_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    """glibc keeps freed heap pages (tokenizer, Python objects) mapped; hand them back."""
    trim = _trim_function()
    if trim is not None:
        trim(0)


@functools.cache  # once per process: each CDLL makes a new ctypes class, cyclic garbage
def _trim_function() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (not Linux, or not glibc: musl has nothing to trim).

    Looked up once: a new CDLL per unload left a few kB of cyclic garbage (a ctypes class and
    its function objects) made after the unload's collection, which kept a pymalloc arena
    in use until the next one."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
