"""`python -m bridge.engine.mlxprobe`: import MLX as the server would and print one JSON object.

Run by `mlx-bridge doctor` in a subprocess, so a broken MLX install (import error, crash, abort)
cannot take the doctor down with it. Reports the versions, the default device and, on Linux,
which library MLX's `cblas_sgemm` calls actually land in.
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def main() -> None:
    out: dict[str, Any] = {"platform": sys.platform}
    try:
        out["blas_setup"] = _enable_fast_blas()
        import mlx.core as mx

        out["mlx"] = mx.__version__
        out["device"] = "gpu" if mx.default_device() == mx.gpu else "cpu"
        a = mx.ones((64, 64))
        mx.eval(a @ a)  # the first matmul binds the BLAS symbols
        import mlx_lm

        out["mlx_lm"] = getattr(mlx_lm, "__version__", "?")
    except Exception as exc:  # report, never crash: the doctor prints it
        out["error"] = f"{type(exc).__name__}: {exc}"
    if sys.platform.startswith("linux"):
        out["blas"] = effective_blas()
    print(json.dumps(out))


def _enable_fast_blas() -> dict[str, str]:
    """Do what the server's engine thread does before MLX's first matmul."""
    try:
        from bridge.engine import blas
    except ImportError:
        return {}
    info = blas.enable()
    return {"name": info.name, "path": info.path, "detail": info.detail}


def effective_blas() -> dict[str, str]:
    """The library MLX's `cblas_sgemm` resolves to: the global scope first, else libmlx's own."""
    libmlx = _loaded("libmlx")
    for lib in (_global_handle(), ctypes.CDLL(libmlx) if libmlx else None):
        address = _symbol(lib, "cblas_sgemm")
        if address:
            path = _library_of(address)
            shim = _shim_target(path)
            if shim is not None:  # bridge/engine/blas_rows.py: few rows on its kernel, the rest on
                rows, path = shim
                return {"path": path, "kind": _identify(path), "gemv_rows": str(rows)}
            return {"path": path, "kind": _identify(path)}
    return {"path": "", "kind": "none"}


def _shim_target(path: str) -> tuple[int, str] | None:
    """(rows, the BLAS library it forwards to) where `path` is the bridge's few-row kernel."""
    try:
        lib = ctypes.CDLL(path)
        target, rows = lib.mlx_bridge_rows_target, lib.mlx_bridge_rows_max
    except (OSError, AttributeError):
        return None
    target.restype = ctypes.c_void_p
    return rows(), _library_of(target())


def _symbol(lib: ctypes.CDLL | None, name: str) -> int | None:
    if lib is None:
        return None
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _global_handle() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _loaded(fragment: str) -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if fragment in path.rsplit("/", 1)[-1] and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def _library_of(address: int | None) -> str:
    if not address:
        return ""
    libc = ctypes.CDLL(None)
    info = _DlInfo()
    try:
        dladdr = libc.dladdr
    except AttributeError:
        dladdr = ctypes.CDLL("libdl.so.2").dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return ""
    return info.dli_fname.decode(errors="replace")


def _identify(path: str) -> str:
    """`OpenBLAS <config>`, `MKL`, `BLIS`, or `reference` for a netlib-style libblas."""
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return "unknown"
    for symbol, name in (("openblas_get_config", "OpenBLAS"), ("mkl_get_max_threads", "MKL"),
                         ("bli_info_get_version_str", "BLIS")):
        if hasattr(lib, symbol):
            if symbol == "openblas_get_config":
                fn = lib.openblas_get_config
                fn.restype = ctypes.c_char_p
                return f"OpenBLAS ({(fn() or b'').decode(errors='replace').strip()})"
            return name
    return "reference" if "blas" in path.rsplit("/", 1)[-1] else "unknown"


if __name__ == "__main__":
    main()
