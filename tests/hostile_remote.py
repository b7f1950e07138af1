"""A hostile OpenAI-protocol endpoint for the attack tests: a thread with raw sockets that answers
each request in the way its `model` names (trickling bytes, streaming forever, one endless line,
HTML, a 500, a close mid-stream...). Real sockets, so the bridge's HTTP client sees exactly what a
broken or malicious remote would send."""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
CHUNK = {"id": "x", "object": "chat.completion.chunk", "model": "m",
         "choices": [{"index": 0, "delta": {"content": "x" * 1000}, "finish_reason": None}]}
EVENT = b"data: " + json.dumps(CHUNK).encode() + b"\n\n"


def _head(status: str, content_type: str, length: int | None = None) -> bytes:
    extra = f"Content-Length: {length}\r\n" if length is not None else ""
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
            "Connection: close\r\n\r\n").encode()


def _forever(conn: socket.socket, data: bytes, pause: float = 0.0) -> None:
    """Send `data` again and again until the bridge hangs up (or 60 s / 512 MiB: a safety net
    for the code before the fixes, which read on)."""
    end, sent = time.monotonic() + 60, 0
    while time.monotonic() < end and sent < 512 << 20:
        conn.sendall(data)
        sent += len(data)
        if pause:
            time.sleep(pause)


def trickle(conn: socket.socket) -> None:  # an event's bytes, one every 0.3 s, never a newline
    conn.sendall(SSE_HEAD + b"data: ")
    _forever(conn, b"x", 0.3)


def trickle_json(conn: socket.socket) -> None:  # a JSON body, one byte every 0.3 s
    conn.sendall(_head("200 OK", "application/json") + b'{"choices": [')
    _forever(conn, b" ", 0.3)


def endless(conn: socket.socket) -> None:  # valid events as fast as the bridge reads, no end
    conn.sendall(SSE_HEAD)
    _forever(conn, EVENT * 64)


def huge_line(conn: socket.socket) -> None:  # one `data:` line that never ends
    conn.sendall(SSE_HEAD + b'data: {"choices": [{"delta": {"content": "')
    _forever(conn, b"a" * 65536)


def huge_done_line(conn: socket.socket) -> None:  # an endless line that says "done" early
    conn.sendall(SSE_HEAD + b'data: {"done": true, "usage": {}, "pad": "')
    _forever(conn, b"a" * 65536)


def gzip_bomb(conn: socket.socket) -> None:  # 256 MiB of one SSE line in ~250 KB of gzip
    conn.sendall(_head("200 OK", "text/event-stream").replace(
        b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1) + _bomb())


@functools.cache
def _bomb(size: int = 256 << 20) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    zeros = b"a" * (1 << 20)
    parts = [packer.compress(b'data: {"choices": [{"delta": {"content": "')]
    parts += [packer.compress(zeros) for _ in range(size >> 20)]
    return b"".join(parts) + packer.flush()


def huge_json(conn: socket.socket) -> None:  # a JSON answer that never ends
    conn.sendall(_head("200 OK", "application/json") + b'{"choices": [], "pad": "')
    _forever(conn, b"a" * 65536)


def invalid_sse(conn: socket.socket) -> None:  # data lines that are not JSON, then the end
    conn.sendall(SSE_HEAD + b"data: {not json\n\ndata: <html>\n\ndata: [DONE]\n\n")


def html(conn: socket.socket) -> None:  # a captive portal / proxy page with status 200
    body = b"<html><body>" + b"<p>login</p>" * 2000 + b"</body></html>"
    conn.sendall(_head("200 OK", "text/html", len(body)) + body)


def html_500(conn: socket.socket) -> None:
    body = b"<html><body><h1>500 Internal Server Error</h1>" + b"x" * 100_000 + b"</body></html>"
    conn.sendall(_head("500 Internal Server Error", "text/html", len(body)) + body)


def huge_error(conn: socket.socket) -> None:  # a 500 whose body never ends
    conn.sendall(_head("500 Internal Server Error", "text/plain"))
    _forever(conn, b"e" * 65536)


def wrong_type(conn: socket.socket) -> None:  # SSE bytes labelled text/plain
    conn.sendall(_head("200 OK", "text/plain") + EVENT + b"data: [DONE]\n\n")


def close_mid(conn: socket.socket) -> None:  # one event, then the connection closes, no [DONE]
    conn.sendall(SSE_HEAD + EVENT)


def silent(conn: socket.socket) -> None:  # accepts, reads the request, never answers
    time.sleep(30)


MODES: dict[str, Callable[[socket.socket], None]] = {
    f.__name__.replace("_", "-"): f for f in (
        trickle, trickle_json, endless, huge_line, huge_done_line, gzip_bomb, huge_json,
        invalid_sse, html, html_500, huge_error, wrong_type, close_mid, silent)}


class HostileRemote:
    """Listens on 127.0.0.1:<port>; `GET /v1/models` lists every mode, POSTs act out theirs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.closed = threading.Event()
        _bomb()  # made now: the bridge's timeout runs while a mode sends
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                head, body = _read_request(conn)
                if head.startswith(b"GET"):
                    models = {"object": "list", "data": [{"id": m, "object": "model"}
                                                         for m in MODES]}
                    data = json.dumps(models).encode()
                    conn.sendall(_head("200 OK", "application/json", len(data)) + data)
                    return
                MODES[json.loads(body).get("model", "")](conn)
            except (OSError, ValueError, KeyError):
                return  # the bridge hung up (what the attacks want) or a request we do not know

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def _read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head, body
