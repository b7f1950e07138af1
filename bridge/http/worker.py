"""The gunicorn worker: gthread, with requests read off-thread and a graceful stop.

Slow clients: stock gthread hands a connection to a request thread as soon as its first byte
arrives; the thread then blocks reading the rest, so ~64 clients trickling headers or a body one
byte a second hold every thread and the server stops answering. This worker reads each request
on its main loop instead, non-blocking, next to accept() and the kept-alive connections: a
connection goes to a thread only once its headers and body are all buffered
(bridge/http/request_reader.py frames them). A request must arrive within `read_timeout` seconds
(MLX_BRIDGE_READ_TIMEOUT, default 30) of its first byte, or it is answered 408 and closed. Bodies
being buffered share one memory budget (503 past it). Uploads streamed through to the upstream
(`/api/blobs/...`) are the exception: they go to a thread after the headers, and each read
there waits at most until a deadline that grows by one second per 64 KiB received. Responses
are never timed: a stream may run for as long as the model generates.

Closing: gunicorn's graceful close (shut down writing, wait up to 2 s for the client to close)
runs on the main loop and blocks it; here it lingers on the poller instead, so a client that
never closes its end cannot stall everyone else.

Graceful stop: on SIGTERM stock gthread stops calling accept() but keeps its listening socket
open until it exits, so a client connecting during the grace period waits in the kernel backlog
and is then reset. This worker shuts the listener down right away (new clients get "connection
refused" and can fail over), lets in-flight requests run for the grace period, then ends the
engine's jobs so their streams finish with an `{"error": ...}` line instead of being cut.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.workers.gthread import TConn, ThreadWorker

from bridge.config import DEFAULT_MAX_BODY, DEFAULT_READ_TIMEOUT
from bridge.http.deadline_reads import DeadlineReads
from bridge.http.request_reader import RequestBuffer, Verdict

log = logging.getLogger(__name__)

EXIT_MARGIN = 5.0  # gunicorn's own deadline is this much later, for the final lines to go out
RECV_BYTES = 256 * 1024  # one read of a request being buffered
MIN_BUDGET = 256 * 1024 * 1024  # request bytes buffered at once, all connections together
STREAM_RATE = 64 * 1024  # bytes/s a streamed upload must average after its first read_timeout
LINGER = 2.0  # seconds a closing connection waits for the client's close (gunicorn's value)
LINGER_DRAIN = 64 * 1024
# After refusing a body that is still arriving: how much more of it is read and dropped so that
# the client, still sending, reads the answer instead of a reset (a close with unread bytes).
REFUSED_DRAIN = 4 << 20
ACCEPT_PAUSE = 0.5  # seconds without accept() after running out of file descriptors
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class BridgeConn(TConn):
    """A gthread connection plus the state of the request being read on the main loop."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any,
                 linger: Callable[[BridgeConn], None]) -> None:
        super().__init__(cfg, sock, client, server)
        self.linger = linger
        self.request: RequestBuffer | None = None
        self.deadline = math.inf
        self.continue_sent = False
        self.streamed = False  # handed over before its body arrived
        self.reads: DeadlineReads | None = None
        self.drained = 0
        self.drain_limit = LINGER_DRAIN

    def close(self, graceful: bool = False) -> None:
        if graceful:  # only ever called on the main loop (finish_request)
            self.linger(self)
        else:
            super().close()


# Requests the main loop answers itself (status line, message), never handing them to a thread.
_REFUSALS = {
    Verdict.HEADERS_TOO_LARGE: ("431 Request Header Fields Too Large",
                                "request header fields too large"),
    Verdict.BODY_TOO_LARGE: ("413 Request Entity Too Large",
                             "request body too large: more than {cap} bytes (the limit is {cap} "
                             "bytes; MLX_BRIDGE_MAX_BODY)"),
    Verdict.BAD_FRAMING: ("400 Bad Request", "malformed request body framing "
                          "(Content-Length or chunked encoding)"),
    Verdict.UNSUPPORTED_CODING: ("501 Not Implemented", "unsupported transfer encoding"),
}


def _answer(sock: socket.socket, status: str, message: str) -> None:
    """Best effort, never blocking: a short JSON error before the connection is closed."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.send(head + body)


class BridgeWorker(ThreadWorker):
    """gthread worker: requests buffered on the main loop, lingering closes, graceful stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = getattr(self.app, "bridge_config", None)
        self.read_timeout = float(getattr(config, "read_timeout", DEFAULT_READ_TIMEOUT))
        self.max_body = int(getattr(config, "max_body", DEFAULT_MAX_BODY))
        self.budget = max(MIN_BUDGET, 2 * self.max_body)
        self.buffered = 0  # bytes held by requests still being read
        self.reading: set[BridgeConn] = set()
        self.lingering: set[BridgeConn] = set()
        self.accept_paused_until = 0.0
        # The off-thread reading speaks plain HTTP/1 only; TLS or HTTP/2 keep gthread's way.
        self.buffer_requests = not self.cfg.is_ssl and list(self.cfg.http_protocols) == ["h1"]

    # ---- accepting --------------------------------------------------------------------------

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_FDS:  # a flood of connections must not kill the worker
                log.warning("accept failed, pausing error=%s open=%d", exc.strerror, self.nr_conns)
                self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                self.set_accept_enabled(False)
            elif exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = BridgeConn(self.cfg, client_sock, client_addr, listener.getsockname(), self._linger)
        self.enqueue_req(conn)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and time.monotonic() < self.accept_paused_until:
            return  # the main loop asks again on its next turn
        super().set_accept_enabled(enabled)

    # ---- reading a request on the main loop -------------------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Start reading the connection's next request; a thread gets it once it is complete."""
        if not self.buffer_requests or not isinstance(conn, BridgeConn):
            super().enqueue_req(conn)
            return
        ahead = b""
        if conn.parser is not None:  # bytes read past the last request: the next one's start
            ahead = conn.parser.unreader.take_buffered()
            ahead += conn.reads.take_buffered() if conn.reads is not None else b""
        conn.request = RequestBuffer(self.max_body, ahead)
        conn.deadline = time.monotonic() + self.read_timeout
        conn.continue_sent = False
        conn.sock.setblocking(False)
        self.buffered += len(ahead)
        self.reading.add(conn)
        if ahead and self._advance(conn, conn.request.feed(b"")):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection's next request (gthread's), unless a forced close earlier in
        the same batch of events has closed it: unregistering its socket (fd -1) raised and
        ended the worker during a stop."""
        if conn.sock.fileno() < 0 or conn not in self.keepalived_conns:
            return
        super().on_client_socket_readable(conn, client)

    def _on_readable(self, conn: BridgeConn, _sock: Any) -> None:
        request = conn.request
        if request is None:  # dropped earlier in the same batch of events (a stop, the cap)
            return
        data = _recv(conn.sock, RECV_BYTES)
        if data is None:
            return
        if not data:  # the client went away before its request was complete
            self._drop(conn)
            return
        if self.buffered + len(data) > self.budget:
            log.warning("request buffers full, refusing budget=%d open=%d",
                        self.budget, len(self.reading))
            self._drop(conn, "503 Service Unavailable",
                       "server busy, please try again.  too many request bodies arriving at once")
            return
        self.buffered += len(data)
        self._advance(conn, request.feed(data))

    def _advance(self, conn: BridgeConn, verdict: Verdict) -> bool:
        """Act on a verdict; True when the connection left the reading set."""
        request = conn.request
        assert request is not None
        if verdict is Verdict.MORE:
            if request.expects_continue and not conn.continue_sent:
                conn.continue_sent = True  # the client waits for this before sending the body
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        refusal = _REFUSALS.get(verdict)
        if refusal is not None:
            status, message = refusal
            self._drop(conn, status, message.format(cap=self.max_body), drain=REFUSED_DRAIN)
            return True
        self._hand_over(conn, streamed=verdict is Verdict.STREAM)
        return True

    def _hand_over(self, conn: BridgeConn, streamed: bool) -> None:
        """The request is buffered (or is a streamed upload): let a thread serve it."""
        self._stop_reading(conn)
        data = bytes(conn.request.data) if conn.request else b""
        conn.request = None
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.reads = DeadlineReads(conn.sock)
            conn.parser.unreader.sock = conn.reads
        conn.reads.preload(data)
        conn.streamed = streamed
        if conn.reads is not None:
            if streamed:
                conn.reads.limit(time.monotonic() + self.read_timeout, STREAM_RATE)
            else:  # everything is buffered: any read is a framing surprise, bounded all the same
                conn.reads.limit(conn.deadline)
        conn.data_ready = True  # no wait for a first byte in the thread
        super().enqueue_req(conn)

    def _stop_reading(self, conn: BridgeConn) -> None:
        if conn in self.reading:
            self.reading.discard(conn)
            self.buffered -= len(conn.request.data) if conn.request else 0
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)

    def _drop(self, conn: BridgeConn, status: str = "", message: str = "",
              drain: int = 0) -> None:
        """Close a connection whose request will not be served (an answer first, if given;
        `drain`: linger, reading up to that much of a body still arriving, before closing)."""
        self._stop_reading(conn)
        if status:
            _answer(conn.sock, status, message)
        self.nr_conns -= 1
        conn.request = None
        if drain:
            conn.drain_limit = drain
            self._linger(conn)
        else:
            TConn.close(conn)

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        if getattr(conn, "streamed", False):
            return False  # part of its body may still be unread: never reuse the connection
        return result

    def handle_request(self, req: Any, conn: Any) -> Any:
        if getattr(conn, "continue_sent", False):
            # sent from the main loop already (a gunicorn internal: do not send it twice)
            req._expected_100_continue = False
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        if getattr(conn, "streamed", False):
            return False  # no blocking drain of a body nobody read: just close
        return super()._keepalive_after(conn, keepalive)

    # ---- timeouts, run from the main loop about once a second --------------------------------

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        stopping = not self.alive  # idle connections go at once, partial ones at their deadline
        expired = [c for c in self.reading
                   if c.deadline <= now or (stopping and not self._has_bytes(c))]
        for conn in expired:
            if self._has_bytes(conn):
                log.info("request not received in time, closing timeout=%gs received=%d",
                            self.read_timeout, len(conn.request.data) if conn.request else 0)
                self._drop(conn, "408 Request Timeout",
                           f"request not received within {self.read_timeout:g} seconds "
                           "(MLX_BRIDGE_READ_TIMEOUT)")
            else:
                self._drop(conn)  # an idle connection: closed silently, as gthread does
        for conn in [c for c in self.lingering if c.deadline <= now]:
            self._end_linger(conn)
        self._make_room()

    def _make_room(self) -> None:
        """At the connection cap, close the oldest idle connections (no byte of a request yet:
        opened and silent, or kept alive between requests), as nginx drains its reusable ones.
        Otherwise a flood of silent connections holds every slot and a real client waits in
        the kernel's backlog until they time out (2,200 of them stalled everyone for 17 s)."""
        if self.nr_conns < self.worker_connections or not self.alive:
            return
        room = max(16, self.worker_connections // 16)
        idle = sorted((c for c in self.reading if not self._has_bytes(c)),
                      key=lambda c: c.deadline)
        for conn in idle[:room]:
            self._drop(conn)
        if idle:
            log.warning("connection cap reached, closed idle connections closed=%d open=%d",
                        min(room, len(idle)), self.nr_conns)

    @staticmethod
    def _has_bytes(conn: BridgeConn) -> bool:
        return bool(conn.request and conn.request.data)

    # ---- closing without blocking the main loop ---------------------------------------------

    def _linger(self, conn: BridgeConn) -> None:
        """Half-close, then wait on the poller (not in a blocking loop) for the client's close."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_linger_readable, conn))
        except (OSError, KeyError, ValueError):
            TConn.close(conn)
            return
        conn.deadline = time.monotonic() + LINGER
        conn.drained = 0
        self.lingering.add(conn)

    def _on_linger_readable(self, conn: BridgeConn, _sock: Any) -> None:
        if conn not in self.lingering:  # closed earlier in the same batch of events
            return
        data = _recv(conn.sock, LINGER_DRAIN)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= conn.drain_limit:
            self._end_linger(conn)

    def _end_linger(self, conn: BridgeConn) -> None:
        self.lingering.discard(conn)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        TConn.close(conn)

    # ---- graceful stop ----------------------------------------------------------------------

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
        # Idle kept-alive connections (a client's pool: httpx, the ollama and openai SDKs) are
        # closed now, as Go's http.Server.Shutdown (Ollama) closes them, not kept for gthread's
        # 2 s stop linger: they carry no request, and a stop waited 2.5 s for them instead of
        # 0.5. A client that sends on one at this instant sees it closed, as with Ollama.
        self.murder_keepalived(force=True)
        self.murder_pending()  # and our own idle ones, waiting for a next request

    def _end_after_grace(self) -> None:
        grace = float(getattr(self.app, "grace", self.cfg.graceful_timeout - EXIT_MARGIN))
        deadline = time.monotonic() + grace
        while self.nr_conns > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.nr_conns > 0:
            log.warning("grace period over, ending in-flight requests grace=%gs open=%d",
                        grace, self.nr_conns)
            self.wsgi.extensions["bridge"].stop()


def _recv(sock: Any, size: int) -> bytes | None:
    """Up to `size` bytes from a non-blocking socket: None when nothing is there yet, b"" once
    the peer has closed or reset the connection."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
