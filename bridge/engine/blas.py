"""Fast CPU path on Linux: run MLX's matmuls on OpenBLAS instead of the wheel's reference BLAS.

The `mlx[cpu]` wheel links `libmlx.so` against a bundled netlib `libblas` (about 5 GFLOP/s here).
Its `cblas_sgemm` & co. are plain, unversioned, lazily bound imports, so a library loaded with
RTLD_GLOBAL before the first matmul wins the symbol lookup. PyPI's `scipy-openblas32` (32-bit
ints, like the netlib interface MLX calls) prefixes every export with `scipy_`; we keep a copy
with the prefix renamed away (`patchelf --rename-dynamic-symbols`) in the user's cache dir.

Call `enable()` on the thread that is about to import MLX, before the first matmul.
`MLX_BRIDGE_BLAS=off` keeps the bundled BLAS; `MLX_BRIDGE_BLAS=/path/libopenblas.so.0` (any
library exporting unprefixed cblas symbols, e.g. Debian's OpenBLAS or MKL's libmkl_rt) is
loaded as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.engine import blas_rows
from bridge.engine.blas_build import patched_openblas

log = logging.getLogger(__name__)

_OFF = frozenset({"0", "off", "no", "false", "bundled", "none"})


@dataclass(frozen=True)
class BlasInfo:
    """Which BLAS MLX's CPU matmuls use in this process."""

    name: str  # "openblas", "custom", "bundled" or "platform" (macOS: Accelerate/Metal)
    path: str = ""
    detail: str = ""
    threads: int | None = None
    gemv_rows: int = 0  # matmuls of at most this many rows run on engine/blas_rows.c


@dataclass(frozen=True)
class WeightFormat:
    """The fastest weight format for this platform's MLX backend."""

    dtype: str  # dtype of the tensors that stay unquantized
    bits: int | None = None  # MLX quantization bits; None = keep full precision
    group_size: int = 64


def preferred_weight_format() -> WeightFormat:
    """float32 on a CPU (MLX's bf16/quantized CPU kernels are slow); 4-bit on Apple silicon."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return WeightFormat(dtype="float16", bits=4)
    return WeightFormat(dtype="float32")


def preferred_dtype() -> str:
    """The dtype models should be stored in for this platform ("float32" on Linux CPU)."""
    return preferred_weight_format().dtype


@functools.cache  # the dynamic linker's state is per process: do it once
def enable() -> BlasInfo:
    """Load an optimized BLAS into the global symbol scope; never raises."""
    if not sys.platform.startswith("linux"):
        return BlasInfo("platform")
    choice = os.environ.get("MLX_BRIDGE_BLAS", "").strip()
    if choice.lower() in _OFF:
        return BlasInfo("bundled", detail="MLX_BRIDGE_BLAS=off")
    try:
        path = Path(choice) if choice else patched_openblas()
        rows = 0 if choice else blas_rows.configured_rows()
        kernel = blas_rows.shim_library() if rows > 0 else None
        # Local first: the few-row kernel (blas_rows) must enter the global scope ahead of it.
        with _brief_idle_spin(kernel is not None):
            lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        if kernel is None or not blas_rows.install(lib, kernel, rows):
            rows = 0  # no compiler: MLX calls OpenBLAS's sgemm for every matmul
        lib = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)  # promoted to global
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("fast BLAS unavailable, MLX keeps its reference BLAS: %s", exc)
        return BlasInfo("bundled", detail=str(exc))
    if "mlx.core" in sys.modules:
        log.debug("BLAS loaded after mlx.core: effective only if no matmul ran yet")
    info = BlasInfo("custom" if choice else "openblas", str(path), _corename(lib),
                    _set_threads(lib), gemv_rows=rows)
    log.info("blas=%s path=%s core=%s threads=%s gemv_rows=%d", info.name, info.path,
             info.detail or "?", info.threads, rows)
    return info


@contextlib.contextmanager
def _brief_idle_spin(short: bool) -> Iterator[None]:
    """Load OpenBLAS with its idle threads spinning 2^18 cycles (~0.1 ms) instead of 2^28
    (~0.1 s) before they sleep, unless OPENBLAS_THREAD_TIMEOUT is set: with the few-row kernel
    a decoding step never calls OpenBLAS, and its threads, still spinning from a prefill's last
    matmul, would take the cores from the kernel's (measured: 38 ms against 20 for a SmolLM2
    step's matmuls). 0.1 ms still spans the gaps between one prefill's matmuls."""
    if not short or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        yield
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "18"  # OpenBLAS reads it once, as it loads
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT", None)


def threads(load: float | None = None) -> int:
    """BLAS threads: MLX_BRIDGE_BLAS_THREADS or OPENBLAS_NUM_THREADS, else the idle cores.

    OpenBLAS's workers spin-wait for each other: when the cores are also busy with other work
    (other processes, test suites) a descheduled worker stalls every matmul. Measured on 2
    cores: SmolLM2 decoded at 1.3 tok/s with 2 threads and 5.0 with 1 at load 4-5, while on the
    idle machine 2 threads are 1.23x faster than 1 (issue 17). So the rule is the physical
    cores that the rest of the machine leaves idle: `load` is how many cores are busy (default:
    the CPU use of other work over the last half second, /proc/stat; see busy_cores), at least
    1 thread. This is the count the engine starts with; ThreadFollower re-decides it as it runs.
    """
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    cores = physical_cores()
    if load is None:
        load = busy_cores(cores)
    return for_load(cores, load)


def fixed_threads() -> int | None:
    """The count MLX_BRIDGE_BLAS_THREADS or OPENBLAS_NUM_THREADS sets (never re-decided)."""
    for var in ("MLX_BRIDGE_BLAS_THREADS", "OPENBLAS_NUM_THREADS"):
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return None


def for_load(cores: int, load: float) -> int:
    """The rule: the cores that `load` (busy cores) leaves idle, at least 1."""
    return max(1, min(cores, cores - round(load)))


def busy_cores(cores: int, sample: float = 0.5) -> float:
    """How many of `cores` other work keeps busy now: the share of CPU time not idle over
    `sample` seconds, not counting this process (/proc/stat). Only where that cannot be read,
    the 1-minute load average; without either, all but one core.

    Not the load average where /proc/stat exists: it lags by a minute, so a bridge started
    right after other work finished (a benchmark's raw run, a build) would see a busy machine
    and keep one thread on an idle one."""
    before = _cpu_times()
    if before is not None:
        time.sleep(sample)
        after = _cpu_times()
        if after is not None:
            busy = other_load(cores, before, after)
            if busy is not None:
                return busy
    with contextlib.suppress(AttributeError, OSError):
        return os.getloadavg()[0]
    return float(cores - 1)


CpuTimes = tuple[int, int, int]  # (all, idle, this process's) jiffies


def other_load(cores: int, before: CpuTimes, after: CpuTimes) -> float | None:
    """Cores kept busy by other processes between two readings (this process's own work,
    the engine's decoding included, is not other work); None if no time passed."""
    total, idle, own = (a - b for a, b in zip(after, before, strict=True))
    if total <= 0:
        return None
    return cores * min(1.0, max(0.0, 1 - (idle + own) / total))


class ThreadFollower:
    """Re-decides OpenBLAS's thread count while the engine runs, as other work comes and goes.

    Used on the engine thread only. `poll()` never sleeps: it keeps the previous /proc reading
    and, at most once per INTERVAL, measures other work's CPU use over the time since, smoothed
    (time constant TAU) so one busy second does not flip the count. A change needs the load
    past the rule's boundary by a margin (hysteresis: a little on the way down, where a wrong
    count costs most, more on the way up), and changes are HOLD seconds apart at least: near a
    boundary the count does not flap. The engine applies what poll() returns
    only where no MLX work is in flight (see bridge/engine/core.py, _follow_blas).
    """

    INTERVAL = 1.0  # seconds between /proc readings
    TAU = 1.5  # seconds: the smoothing's time constant
    # Cores past a boundary before the count changes. Down is quick: beside 2 spinning OpenBLAS
    # threads one CPU-bound process gets only ~2/3 of a core (reads 0.67), and must still count.
    MARGIN_DOWN = 0.1
    MARGIN_UP = 0.25
    HOLD = 3.0  # seconds at least between two changes

    def __init__(self, setter: Callable[[int], None], current: int, cores: int,
                 read: Callable[[], CpuTimes | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.setter, self.current, self.cores = setter, current, cores
        self.read = read or _cpu_times
        self.clock = clock
        self.load: float | None = None  # smoothed busy cores of other work; None: no reading yet
        self._last = self.read()
        self._last_at = self._changed_at = clock()

    def poll(self) -> int | None:
        """The thread count to switch to now, or None to keep the current one."""
        now = self.clock()
        if now - self._last_at >= self.INTERVAL:
            self._observe(now)
        if self.load is None or now - self._changed_at < self.HOLD:
            return None
        up = for_load(self.cores, self.load + self.MARGIN_UP)  # more threads: clearly idle
        down = for_load(self.cores, self.load - self.MARGIN_DOWN)  # fewer: clearly busy
        if up > self.current:
            return up
        if down < self.current:
            return down
        return None

    def set(self, n: int) -> None:
        """Switch OpenBLAS to `n` threads (call only where no BLAS call can be running)."""
        was, self.current = self.current, n
        self._changed_at = self.clock()
        self.setter(n)
        log.info("blas_threads=%d was=%d other_load=%.2f cores=%d", n, was, self.load or 0.0,
                 self.cores)

    def _observe(self, now: float) -> None:
        reading = self.read()
        busy = None
        if reading is not None and self._last is not None:
            busy = other_load(self.cores, self._last, reading)
        if busy is not None:
            weight = 1 - math.exp(-(now - self._last_at) / self.TAU)
            self.load = busy if self.load is None else self.load + weight * (busy - self.load)
        self._last, self._last_at = reading, now


def follower(info: BlasInfo) -> ThreadFollower | None:
    """A ThreadFollower for the BLAS enable() loaded, or None where nothing is to follow: a
    fixed count (MLX_BRIDGE_BLAS_THREADS, OPENBLAS_NUM_THREADS), a BLAS that is not OpenBLAS
    (MKL, the bundled one, macOS's Accelerate), one core, or no /proc/stat."""
    if info.threads is None or not info.path or fixed_threads() is not None:
        return None
    cores = physical_cores()
    if cores < 2 or _cpu_times() is None:
        return None
    try:
        lib = ctypes.CDLL(info.path)  # already loaded: the same handle
        setter, getter = lib.openblas_set_num_threads, lib.openblas_get_num_threads
    except (OSError, AttributeError):
        return None
    setter.argtypes = [ctypes.c_int]
    getter.restype = ctypes.c_int
    # The count now (an earlier engine of this process may have changed it since enable()).
    return ThreadFollower(setter, getter(), cores)


def settle_mlx() -> None:
    """Wait until no MLX computation started by this thread runs: mlx-lm and mlx-vlm evaluate
    the next token asynchronously (mx.async_eval) on their own per-thread generation streams,
    so a BLAS call may be running on MLX's CPU stream thread between two steps."""
    import mlx.core as mx

    mx.synchronize()
    for name in ("mlx_lm.generate", "mlx_vlm.generate.common", "mlx_vlm.speculative.common"):
        stream = getattr(sys.modules.get(name), "generation_stream", None)
        if stream is not None:
            mx.synchronize(stream)


def _cpu_times() -> CpuTimes | None:
    """(all, idle, this process's) jiffies from /proc/stat's "cpu" line and /proc/self/stat
    (Linux only)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    if len(fields) < 5 or len(own) < 13:
        return None
    return sum(fields[:8]), fields[3] + fields[4], int(own[11]) + int(own[12])


def physical_cores() -> int:
    """Usable cores without SMT siblings (two hyperthreads of one core share its FPUs)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    seen = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            seen.add(((topo / "physical_package_id").read_text().strip(),
                      (topo / "core_id").read_text().strip()))
        except OSError:
            seen.add(("cpu", str(cpu)))
    return max(1, len(seen))


def _set_threads(lib: ctypes.CDLL) -> int | None:
    try:
        setter = lib.openblas_set_num_threads
    except AttributeError:  # MKL or another BLAS: its own variables decide
        return None
    n = threads()
    setter.argtypes = [ctypes.c_int]
    setter(n)
    return n


def _corename(lib: ctypes.CDLL) -> str:
    try:
        fn = lib.openblas_get_corename
    except AttributeError:
        return ""
    fn.restype = ctypes.c_char_p
    return (fn() or b"").decode(errors="replace")
