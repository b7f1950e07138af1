"""The gunicorn worker: gthread, plus a graceful stop that refuses new connections at once.

On SIGTERM stock gthread stops calling accept() but keeps its listening socket open until it exits,
so a client connecting during the grace period waits in the kernel backlog and is then reset. This
worker shuts the listener down right away (new clients get "connection refused" and can fail over),
lets in-flight requests run for the grace period, then ends the engine's jobs so their streams
finish with an `{"error": ...}` line instead of being cut.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

log = logging.getLogger(__name__)

EXIT_MARGIN = 5.0  # gunicorn's own deadline is this much later, for the final lines to go out


class BridgeWorker(ThreadWorker):
    """gthread worker with the bridge's graceful stop."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        first = self.alive
        super().handle_exit(sig, frame)
        if not first:
            return
        defer = getattr(getattr(self, "method_queue", None), "defer", None)
        if defer is not None:  # on the main loop's thread: it owns the poller
            defer(self._stop_listening)
        threading.Thread(target=self._end_after_grace, name="grace", daemon=True).start()

    def _stop_listening(self) -> None:
        self.set_accept_enabled(False)
        for listener in self.sockets:
            with contextlib.suppress(OSError):  # macOS refuses shutdown() on a listener
                listener.sock.shutdown(socket.SHUT_RDWR)

    def _end_after_grace(self) -> None:
        grace = float(getattr(self.app, "grace", self.cfg.graceful_timeout - EXIT_MARGIN))
        deadline = time.monotonic() + grace
        while self.nr_conns > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.nr_conns > 0:
            log.warning("grace period over, ending in-flight requests grace=%gs open=%d", grace, self.nr_conns)
            self.wsgi.extensions["bridge"].stop()
