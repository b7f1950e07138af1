"""Cheap fingerprint of a model directory: file names, sizes and mtimes, never file contents."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


@dataclass(frozen=True)
class DirScan:
    """Regular files under a directory as sorted (relative posix name, size, mtime_ns) rows."""

    files: tuple[tuple[str, int, int], ...]

    @property
    def size(self) -> int:
        """Total bytes."""
        return sum(f[1] for f in self.files)

    @property
    def modified_at(self) -> datetime:
        """Newest mtime as an aware UTC datetime (the epoch when there are no files)."""
        ns = max((f[2] for f in self.files), default=0)
        seconds, rest = divmod(ns, 1_000_000_000)
        return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=rest // 1000)

    def digest(self, extra: bytes = b"") -> str:
        """sha256 (64 hex) over the canonical JSON listing followed by `extra`."""
        listing = json.dumps([list(row) for row in self.files], separators=(",", ":"))
        return hashlib.sha256(listing.encode() + b"\n" + extra).hexdigest()


def scan_dir(root: str | os.PathLike[str]) -> DirScan:
    """List regular files, following symlinks but skipping hidden names and directory loops."""
    rows: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rows.extend(_file_rows(Path(root), dirpath, filenames))
    return DirScan(tuple(sorted(rows)))


def _file_rows(root: Path, dirpath: str, names: list[str]) -> list[tuple[str, int, int]]:
    """(relative posix name, size, mtime_ns) of the regular, non-hidden files in one directory."""
    rows = []
    for name in names:
        full = os.path.join(dirpath, name)
        try:
            st = os.stat(full)  # follows symlinks: HF cache snapshots point at blobs
        except OSError:
            continue
        if not name.startswith(".") and stat.S_ISREG(st.st_mode):
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            rows.append((rel, st.st_size, st.st_mtime_ns))
    return rows
