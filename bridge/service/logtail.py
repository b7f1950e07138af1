"""Read the server log: the last lines, and follow it across rotations (`mlx-bridge logs -f`)."""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a file (empty when it does not exist)."""
    try:
        with open(path, "rb") as f:
            return _last_lines(f, f.seek(0, os.SEEK_END), lines)
    except FileNotFoundError:
        return []


def _last_lines(f: BinaryIO, end: int, lines: int) -> list[str]:
    """The last `lines` lines before offset `end`, reading backwards in blocks."""
    if lines <= 0:
        return []
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(8192, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    f.seek(end)
    return [line + "\n" for line in data.decode(errors="replace").splitlines()[-lines:]]


def follow(path: Path, write: Callable[[str], None], *, lines: int = 0, poll: float = 0.3,
           stop: threading.Event | None = None) -> None:
    """Write the last `lines` lines, then what is appended until `stop` is set (over rotations)."""
    stop = stop or threading.Event()
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    f = _open(path, at_end=True)
    if f:
        write("".join(_last_lines(f, f.tell(), lines)))
    try:
        while not stop.is_set():
            chunk = f.read() if f else b""
            if chunk:
                write(decode(chunk))
                continue
            if _replaced(path, f):
                if f:
                    write(decode(f.read()))  # what the old file got before rotation
                    f.close()
                f = _open(path)
                continue
            stop.wait(poll)
    finally:
        if f:
            f.close()


def _open(path: Path, at_end: bool = False) -> BinaryIO | None:
    try:
        f = open(path, "rb")  # noqa: SIM115 (kept open across calls)
    except FileNotFoundError:
        return None
    if at_end:
        f.seek(0, os.SEEK_END)
    return f


def _replaced(path: Path, f: BinaryIO | None) -> bool:
    """True when `path` now names another file than `f` (rotated, recreated or truncated)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if f is None:
        return True
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino) or st.st_size < f.tell()
