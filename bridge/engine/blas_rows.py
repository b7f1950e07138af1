"""Few-row float32 matmuls on a kernel of the bridge's own (Linux CPU, the fast path).

MLX computes every float32 matmul with `cblas_sgemm`, a decoding step's too, where each linear
layer multiplies one row per sequence by a weight matrix. OpenBLAS's sgemm first copies the
whole weight into its panel layout (`sgemm_incopy`: half of a lone stream's CPU time under
`perf`), however few the rows, then multiplies. `blas_rows.c` reads each weight row once, from
memory, and reuses it from L1 for every row: register tiles of 4 rows by 4 weight rows (dot
products, B transposed: the linear layers) or by two vectors of columns (B as it is: the
attention's scores @ V), AVX-512/AVX2/NEON as the compiler finds the machine, the columns split
between OpenBLAS's thread count of threads (a small pool of its own, spinning 2 ms, then
asleep on a futex). Measured on an idle 2-core Intel Xeon (AVX-512; OpenBLAS 0.3.34's SkylakeX
kernels, 2 threads), all 211 matmuls of a SmolLM2-135M decoding step: 20 ms against OpenBLAS's
49 at 1 row (its sgemv: 25), 33 against 55 at 8 rows, 48 against 68 at 16, level by 32-48
(docs/performance.md, "A few-row kernel").

Each output is summed in one order whatever the row count and the threads' shares of the
columns, so a sequence decodes to the same bits alone or in a batch of up to `rows`.

The C source is compiled once with the machine's C compiler (`-O3 -march=native`, else `-O3`;
CC, Python's own, cc, gcc or clang, tried in turn) and cached beside the patched OpenBLAS
(bridge/engine/blas_build.py), named by a hash of the CPU, the compiler and the source. It
exports `cblas_sgemm`: a row-major call of at most `rows` rows runs on the kernel, every other
call goes to OpenBLAS's sgemm unchanged. blas.enable() puts it ahead of OpenBLAS in the
process's symbol scope, so libmlx's lazily bound `cblas_sgemm` import binds to it. Without a C
compiler nothing changes: MLX calls OpenBLAS's sgemm as before. `MLX_BRIDGE_GEMV_ROWS=0` (the
name is from the kernel's first version, one sgemv a row) turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

from bridge.engine.blas_build import cache_dirs
from bridge.envvars import env_int, env_on

log = logging.getLogger("bridge.engine.blas")

DEFAULT_ROWS = 16  # measured above: ahead of sgemm to 16 rows by 1.4x or more, level by 32-48
FLAGS = (("-O3", "-march=native"), ("-O3",))  # the machine's vector unit, else the baseline

SOURCE = Path(__file__).with_name("blas_rows.c").read_text()


def configured_rows() -> int:
    """MLX_BRIDGE_GEMV_ROWS (0 or off: every matmul on sgemm), else DEFAULT_ROWS."""
    if not env_on(os.environ, "MLX_BRIDGE_GEMV_ROWS"):
        return 0
    return env_int(os.environ, "MLX_BRIDGE_GEMV_ROWS", DEFAULT_ROWS)


def shim_library(cache_dir: Path | None = None) -> Path | None:
    """The compiled kernel (built once, cached); None where no C compiler builds it."""
    compilers = _compilers()
    if not compilers:
        log.info("few-row matmuls stay on sgemm: no C compiler to build the few-row kernel")
        return None
    cpu = _cpu_signature()
    for compiler in compilers:
        for flags in FLAGS:
            key = "\0".join([platform.machine(), cpu, *compiler, *flags, SOURCE])
            tag = hashlib.sha256(key.encode()).hexdigest()[:16]
            for folder in [cache_dir] if cache_dir else cache_dirs():
                target = folder / f"libmlx-bridge-rows-{tag}.so"
                if target.is_file():
                    return target
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    return _build([*compiler, *flags], target)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    detail = (exc.stderr or b"").decode(errors="replace").strip()[-300:]
                    log.warning("the few-row kernel did not build with %s %s: %s", compiler[0],
                                " ".join(flags), detail)
                    break  # these flags fail with this compiler: try the next ones
                except OSError:
                    continue  # an unwritable folder: try the next one
    log.warning("few-row matmuls stay on sgemm: the few-row kernel did not build")
    return None


def install(blas: ctypes.CDLL, path: Path, rows: int) -> bool:
    """Load the kernel at `path` into the global symbol scope, calling `blas`'s sgemm; call it
    after loading `blas` with RTLD_LOCAL and before making `blas` global (blas.enable)."""
    if rows <= 0:
        return False
    try:  # before the kernel enters the global scope: it must never run without them
        sgemm = ctypes.cast(blas.cblas_sgemm, ctypes.c_void_p)
    except AttributeError as exc:
        log.warning("few-row matmuls stay on sgemm: %s", exc)
        return False
    try:  # OpenBLAS's thread count (the engine follows the load); without it, one thread
        threads = ctypes.cast(blas.openblas_get_num_threads, ctypes.c_void_p)
    except AttributeError:
        threads = ctypes.c_void_p()
    try:
        shim = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        shim.mlx_bridge_rows_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        shim.mlx_bridge_rows_init(sgemm, threads, rows)
    except (OSError, AttributeError) as exc:
        log.warning("few-row matmuls stay on sgemm: %s", exc)
        return False
    return True


def _cpu_signature() -> str:
    """The CPU's model and features: `-march=native` code is only reused on the same kind."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags", "features", "cpu implementer", "cpu part")
    picked = {line.split(":", 1)[0].strip().lower(): line for line in lines
              if line.split(":", 1)[0].strip().lower() in keys}
    return "\n".join(picked.values()) or platform.processor()


def _compilers() -> list[list[str]]:
    """C compiler commands to try: CC, the one Python was built with, cc, gcc, clang."""
    found: list[list[str]] = []
    for spec in (os.environ.get("CC", ""), sysconfig.get_config_var("CC") or "", "cc", "gcc",
                 "clang"):
        try:
            words = shlex.split(spec)
        except ValueError:
            continue
        path = shutil.which(words[0]) if words else None
        if path and [path, *words[1:]] not in found:
            found.append([path, *words[1:]])
    return found


def _build(compiler: list[str], target: Path) -> Path:
    source = target.with_name(f"{target.stem}.{os.getpid()}.c")
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        source.write_text(SOURCE)
        subprocess.run([*compiler, "-shared", "-fPIC", "-pthread", "-o", str(tmp), str(source),
                        "-ldl"], check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)  # atomic: concurrent servers may build it at the same time
    finally:
        source.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    log.info("built the few-row kernel path=%s", target)
    return target
