"""The socket as a request thread's parser reads it: the buffered request first, then reads
that wait until a deadline at most (bridge/http/worker.py hands connections over with it)."""

from __future__ import annotations

import math
import selectors
import socket
import time
from typing import Any


class DeadlineReads:
    """The socket as gunicorn's request parser sees it: each read waits until a deadline at most.

    Writes go to the socket itself and are never timed. The deadline grows by one second per
    `rate` bytes received (0: fixed), so a large upload may take as long as it really needs.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = math.inf
        self.rate = 0
        self.received = 0
        self._buffered = memoryview(b"")  # read on the main loop already: served first

    def limit(self, deadline: float, rate: int = 0) -> None:
        self.deadline, self.rate, self.received = deadline, rate, 0

    def preload(self, data: bytes) -> None:
        """Serve `data` (the request the main loop buffered) before reading the socket.

        Instead of gunicorn's `unread`: its buffer is copied whole on every read, so a body
        read 64 KiB at a time cost time in the square of its size (0.9 s at 31 MB)."""
        self._buffered = memoryview(data)

    def take_buffered(self) -> bytes:
        """What of the preloaded bytes the parser did not read (a pipelined next request)."""
        rest, self._buffered = bytes(self._buffered), memoryview(b"")
        return rest

    def recv(self, size: int) -> bytes:
        if self._buffered:
            piece, self._buffered = self._buffered[:size], self._buffered[size:]
            return bytes(piece)
        until = self.deadline + (self.received / self.rate if self.rate else 0)
        remaining = until - time.monotonic()
        if remaining <= 0 or not _readable(self._sock, remaining):
            raise TimeoutError("the client sent its request too slowly")
        data = self._sock.recv(size)
        self.received += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _readable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(timeout))
