"""The server's log file: size-rotated, with stdout/stderr following the current file.

Everything the process prints lands in one file: log records through the handler, and raw writes
to file descriptors 1 and 2 (gunicorn's error log, tracebacks, warnings from C libraries), which
are re-pointed at the new file after every rotation.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3
MIN_MAX_BYTES = 1024


def rotation_limits(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(max bytes, backup count) from MLX_BRIDGE_LOG_MAX_BYTES / MLX_BRIDGE_LOG_BACKUPS.

    >>> rotation_limits({})
    (10485760, 3)
    >>> rotation_limits({"MLX_BRIDGE_LOG_MAX_BYTES": "4096", "MLX_BRIDGE_LOG_BACKUPS": "1"})
    (4096, 1)
    >>> rotation_limits({"MLX_BRIDGE_LOG_MAX_BYTES": "tiny"})
    (10485760, 3)
    """
    env = os.environ if env is None else env
    return (_int(env.get("MLX_BRIDGE_LOG_MAX_BYTES"), DEFAULT_MAX_BYTES, MIN_MAX_BYTES),
            _int(env.get("MLX_BRIDGE_LOG_BACKUPS"), DEFAULT_BACKUPS, 1))


def _int(raw: str | None, default: int, minimum: int) -> int:
    """A positive integer setting; anything unusable gives the default."""
    value = (raw or "").strip()
    if not value.isdigit():
        return default
    return max(int(value), minimum)


class ServerLogHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that keeps fds 1 and 2 on the current file.

    The gunicorn master and worker share the file: when the other process has rotated it, this
    one reopens the new file instead of rotating again.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int,
                 redirect_std: bool = True) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.redirect_std = redirect_std
        self._redirect()

    def emit(self, record: logging.LogRecord) -> None:
        if self._rotated_elsewhere():
            self._reopen()
        super().emit(record)

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        super().doRollover()
        self._redirect()

    def _rotated_elsewhere(self) -> bool:
        """True when the path no longer names the file this handler writes."""
        if self.stream is None:
            return False
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            return True
        mine = os.fstat(self.stream.fileno())
        return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)

    def _reopen(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = self._open()
        self._redirect()

    def _redirect(self) -> None:
        """Point fds 1 and 2 at the current file (same open file, so sizes add up)."""
        if not self.redirect_std or self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr, self.stream):
            if stream is not None:
                stream.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)
