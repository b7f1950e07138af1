"""Slow and stuck HTTP clients for tests/test_slow_clients.py (and by hand: `python -m
tests.slow_util URL KIND COUNT`): each opens many raw sockets and trickles one byte a second.

Kinds:
- headers:   a request line and one header, then one more header byte a second, never finished
- body:      complete headers of a 100 kB POST, then one body byte a second
- oversized: headers declaring a body over the size cap, then one body byte a second
- no-close:  a complete HTTP/1.0 request (answered with "Connection: close"); the client never
             reads the answer and never closes its side
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

KINDS = ("headers", "body", "oversized", "no-close")


def _opening(kind: str, host: str) -> bytes:
    if kind == "headers":
        return f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
    if kind == "body":
        return (f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n{").encode()
    if kind == "oversized":
        return (f"POST /api/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000000000\r\n\r\n{").encode()
    if kind == "no-close":
        return f"GET /api/version HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    raise ValueError(kind)


@dataclass
class Slow:
    sock: socket.socket
    opened: float
    closed: float | None = None  # when the server closed or reset it (seen by the trickler)
    answer: bytes = b""


@dataclass
class Trickle:
    """`count` slow clients of one kind, trickling from a background thread until stopped."""

    url: str
    kind: str
    count: int
    clients: list[Slow] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Trickle:
        parts = urlsplit(self.url)
        address = (parts.hostname, parts.port)
        host = f"{parts.hostname}:{parts.port}"
        for _ in range(self.count):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(_opening(self.kind, host))
            sock.setblocking(False)
            self.clients.append(Slow(sock, time.monotonic()))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for client in self.clients:
            client.sock.close()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for client in self.clients:
                if client.closed is None:
                    self._poke(client)

    def _poke(self, client: Slow) -> None:
        try:
            while chunk := client.sock.recv(65536):
                client.answer += chunk
            client.closed = time.monotonic()  # orderly close by the server
            return
        except BlockingIOError:
            pass
        except OSError:
            client.closed = time.monotonic()
            return
        if self.kind == "no-close":
            return  # it neither reads nor closes: recv above only looks for the server's close
        try:
            client.sock.send(b"x")
        except OSError:
            client.closed = time.monotonic()

    def still_open(self) -> int:
        return sum(client.closed is None for client in self.clients)


def timed(method: str, url: str, **kwargs: object) -> tuple[float, requests.Response | Exception]:
    """Seconds to an answer (or to the failure), and the answer."""
    start = time.monotonic()
    try:
        resp: requests.Response | Exception = requests.request(method, url, timeout=30, **kwargs)
    except requests.RequestException as exc:
        resp = exc
    return time.monotonic() - start, resp


SHORT_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False,
              "options": {"num_predict": 2, "temperature": 0}}


def main(url: str, kind: str, count: int) -> None:
    """Measure /api/version and a short chat beside `count` slow clients (prints one line)."""
    with Trickle(url, kind, count) as slow:
        time.sleep(2)
        version, _ = timed("GET", url + "/api/version")
        chat, _ = timed("POST", url + "/api/chat", json=SHORT_CHAT)
        print(f"kind={kind} count={count} version_s={version:.2f} chat_s={chat:.2f} "
              f"open_after_2s={slow.still_open()}", flush=True)
        start = time.monotonic()
        while slow.still_open() and time.monotonic() - start < 120:
            time.sleep(1)
        print(f"kind={kind} all_closed_after_s={time.monotonic() - start + 2:.0f} "
              f"still_open={slow.still_open()} answered_408="
              f"{sum(c.answer.startswith(b'HTTP/1.1 408') for c in slow.clients)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
