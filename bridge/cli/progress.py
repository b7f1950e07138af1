"""Render /api/pull progress lines (spec §1.5): a bar per layer on a terminal, else plain lines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TextIO

BAR_WIDTH = 30


def human_size(n: float) -> str:
    """Decimal units, like the ollama CLI.

    >>> human_size(0), human_size(999), human_size(4_700_000_000), human_size(397_800_000)
    ('0 B', '999 B', '4.7 GB', '398 MB')
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


@dataclass
class PullProgress:
    """Turns progress lines into output; on a terminal one line per layer is redrawn in place."""

    out: TextIO
    tty: bool
    _status: str = ""
    _open_line: bool = False
    _started: dict[str, float] = field(default_factory=dict)
    _finished: set[str] = field(default_factory=set)

    def update(self, line: dict[str, Any]) -> None:
        status = str(line.get("status", ""))
        total = line.get("total") or 0
        if line.get("digest") and total:
            self._layer(status, str(line["digest"]), int(total), int(line.get("completed") or 0))
            return
        if status and status != self._status:
            self._end_line()
            self.out.write(status + "\n")
            self.out.flush()
        self._status = status

    def close(self) -> None:
        self._end_line()

    def _layer(self, status: str, digest: str, total: int, completed: int) -> None:
        started = self._started.setdefault(digest, time.monotonic())
        if status != self._status:
            self._end_line()
            self._status = status
        text = bar_line(status, total, completed, time.monotonic() - started)
        if self.tty:
            self.out.write("\r" + text + "\033[K")
            self._open_line = True
        elif completed >= total and digest not in self._finished:
            self.out.write(text + "\n")  # plain output: one line per finished layer
            self._finished.add(digest)
        self.out.flush()

    def _end_line(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self._open_line = False


def bar_line(status: str, total: int, completed: int, elapsed: float) -> str:
    """`pulling 1a2b3c4d5e6f  42% ▕████▏ 1.2 GB/2.9 GB  30 MB/s`.

    >>> bar_line("pulling abc", 200, 100, 0.0)
    'pulling abc   50% ▕███████████████               ▏ 100 B/200 B'
    """
    completed = min(completed, total)
    fraction = completed / total if total else 1.0
    filled = int(fraction * BAR_WIDTH)
    text = (f"{status} {fraction * 100:4.0f}% ▕{'█' * filled}{' ' * (BAR_WIDTH - filled)}▏ "
            f"{human_size(completed)}/{human_size(total)}")
    if elapsed > 0.5 and completed < total:
        text += f"  {human_size(completed / elapsed)}/s"
    return text
