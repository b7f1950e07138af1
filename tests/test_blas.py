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

from bridge.engine import blas

linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                           reason="the fast BLAS is for Linux CPU")

# Run in a fresh interpreter: which BLAS MLX binds is decided once per process.
PROBE = """
import ctypes, json
from bridge.engine import blas
info = blas.enable()
import mlx.core as mx
import numpy as np
a = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((200, 100)).astype(np.float32)
got = np.array(mx.array(a) @ mx.array(b))
bound = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p).value if info.path else None
ours = (ctypes.cast(ctypes.CDLL(info.path).cblas_sgemm, ctypes.c_void_p).value
        if info.path else None)
print(json.dumps({"name": info.name, "path": info.path, "core": info.detail,
                  "threads": info.threads, "err": float(np.abs(got - a @ b).max()),
                  "same_symbol": bound == ours}))
"""


def probe(env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux
def test_openblas_is_loaded_and_computes_correct_matmuls(tmp_path):
    result = probe({"XDG_CACHE_HOME": str(tmp_path)})
    assert result["name"] == "openblas"
    assert Path(result["path"]).is_relative_to(tmp_path)
    assert result["same_symbol"], "the process-wide cblas_sgemm is OpenBLAS's"
    assert result["err"] < 1e-3


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
        blas_name = requests.get(server + "/health", timeout=10).json()["engine"]["blas"]
        time.sleep(0.1)
    assert blas_name == "openblas"
