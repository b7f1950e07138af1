"""Few-row float32 matmuls on OpenBLAS's matrix-vector kernel (Linux CPU, fast path).

MLX computes every float32 matmul with `cblas_sgemm`, a lone stream's decoding step too, where
each linear layer multiplies one row by a weight matrix. OpenBLAS's sgemm first copies the whole
weight into its panel layout (`sgemm_incopy`, half of a decoding step's CPU time under `perf`)
and then runs its matrix-matrix kernel on that single row; `cblas_sgemv` streams the weight once.
Measured on an idle 2-core AMD EPYC (Zen 5, OpenBLAS's Haswell kernels, 2 threads), SmolLM2's
211 matmuls of one step: 35.6 ms as sgemm against 15.6 ms as sgemv at 1 row, 40.5 against 24.1
at 2 rows (one sgemv a row), level at 4 rows (47.5 / 46.0), and sgemm ahead from there (40.3
against 64.1 at 8 rows): the weights, read from memory, stay in cache for the next row only
while the rows are few.

A tiny C shim, compiled once with the machine's C compiler and cached beside the patched
OpenBLAS (bridge/engine/blas_build.py), exports `cblas_sgemm`: a row-major call of at most
`rows` rows becomes one `cblas_sgemv` a row, every other call goes to OpenBLAS's sgemm
unchanged. blas.enable() puts it ahead of OpenBLAS in the process's symbol scope, so libmlx's
lazily bound `cblas_sgemm` import binds to it. Without a C compiler nothing changes: MLX calls
OpenBLAS's sgemm as before. `MLX_BRIDGE_GEMV_ROWS=0` turns it off.
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

DEFAULT_ROWS = 3  # measured above: sgemv a row wins at 1-3 rows, ties at 4, loses past it

SOURCE = r"""
/* mlx-bridge: few-row sgemm as one sgemv a row (bridge/engine/blas_rows.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float *, int,
                        const float *, int, float, float *, int);
typedef void (*sgemv_t)(int, int, int, int, float, const float *, int, const float *, int,
                        float, float *, int);

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

static sgemm_t real_sgemm;
static sgemv_t real_sgemv;
static int max_rows; /* set before the first matmul; 0: every call goes to sgemm */
static long forwarded; /* calls run as sgemv (mlx_bridge_rows_forwarded: for the tests) */

void mlx_bridge_rows_init(void *sgemm, void *sgemv, int rows) {
    real_sgemm = (sgemm_t)sgemm;
    real_sgemv = (sgemv_t)sgemv;
    max_rows = rows;
}

long mlx_bridge_rows_forwarded(void) { return forwarded; }
void *mlx_bridge_rows_target(void) { return (void *)real_sgemm; } /* for the doctor */
int mlx_bridge_rows_max(void) { return max_rows; }

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) {
    if (!real_sgemm) /* never initialised: the next cblas_sgemm in the search order */
        real_sgemm = (sgemm_t)dlsym(RTLD_NEXT, "cblas_sgemm");
    if (order == ROW_MAJOR && m >= 1 && m <= max_rows && n > 0 && k > 0 && real_sgemv
        && (ta == NO_TRANS || ta == TRANS) && (tb == NO_TRANS || tb == TRANS)) {
        for (int i = 0; i < m; i++) {
            /* row i of op(A): contiguous, or a column of A (stride lda) when transposed */
            const float *x = ta == NO_TRANS ? a + (long)i * lda : a + i;
            int incx = ta == NO_TRANS ? 1 : lda;
            float *y = c + (long)i * ldc;
            if (tb == TRANS) /* op(B) = B^T, B is n x k: y = B x */
                real_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, x, incx, beta, y, 1);
            else /* B is k x n: y = B^T x */
                real_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, x, incx, beta, y, 1);
        }
        __atomic_fetch_add(&forwarded, 1, __ATOMIC_RELAXED);
        return;
    }
    real_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""


def configured_rows() -> int:
    """MLX_BRIDGE_GEMV_ROWS (0 or off: every matmul on sgemm), else DEFAULT_ROWS."""
    if not env_on(os.environ, "MLX_BRIDGE_GEMV_ROWS"):
        return 0
    return env_int(os.environ, "MLX_BRIDGE_GEMV_ROWS", DEFAULT_ROWS)


def shim_library(cache_dir: Path | None = None) -> Path | None:
    """The compiled shim (built once, cached); None where no C compiler builds it."""
    compilers = _compilers()
    if not compilers:
        log.info("few-row matmuls stay on sgemm: no C compiler to build the sgemv shim")
        return None
    for compiler in compilers:
        key = f"{platform.machine()}\0{' '.join(compiler)}\0{SOURCE}"
        tag = hashlib.sha256(key.encode()).hexdigest()[:16]
        for folder in [cache_dir] if cache_dir else cache_dirs():
            target = folder / f"libmlx-bridge-rows-{tag}.so"
            if target.is_file():
                return target
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return _build(compiler, target)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                detail = (exc.stderr or b"").decode(errors="replace").strip()[-300:]
                log.warning("the sgemv shim did not build with %s: %s", compiler[0], detail)
                break  # this compiler fails here: try the next one
            except OSError:
                continue  # an unwritable folder: try the next one
    log.warning("few-row matmuls stay on sgemm: the sgemv shim did not build")
    return None


def install(blas: ctypes.CDLL, rows: int) -> Path | None:
    """Load the shim into the global symbol scope, calling `blas`'s sgemm and sgemv; call it
    after loading `blas` with RTLD_LOCAL and before making `blas` global (blas.enable)."""
    if rows <= 0:
        return None
    try:  # before the shim enters the global scope: it must never run without them
        sgemm = ctypes.cast(blas.cblas_sgemm, ctypes.c_void_p)
        sgemv = ctypes.cast(blas.cblas_sgemv, ctypes.c_void_p)
    except AttributeError as exc:
        log.warning("few-row matmuls stay on sgemm: %s", exc)
        return None
    path = shim_library()
    if path is None:
        return None
    try:
        shim = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        shim.mlx_bridge_rows_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        shim.mlx_bridge_rows_init(sgemm, sgemv, rows)
    except (OSError, AttributeError) as exc:
        log.warning("few-row matmuls stay on sgemm: %s", exc)
        return None
    return path


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
        subprocess.run([*compiler, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(source), "-ldl"],
                       check=True, capture_output=True, timeout=120)
        os.replace(tmp, target)  # atomic: concurrent servers may build it at the same time
    finally:
        source.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    log.info("built the few-row sgemv shim path=%s", target)
    return target
