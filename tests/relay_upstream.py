"""An upstream for the relay tests: a real HTTP server process that echoes what reaches it.

Run: `python tests/relay_upstream.py PORT NAME`. Any method on any path answers 200 with
`{"upstream": NAME, "method", "target", "body", "model", "authorization", "cookie"}`, except:
`GET /api/status` answers Ollama's cloud status; `/teapot` answers 418 with a Set-Cookie;
`/slow/...` streams two NDJSON lines three seconds apart (chunked); `/_records` lists every
request seen and `/_reset` forgets them. It never goes through the bridge's code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

SLOW_PAUSE = 3.0


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, name: str) -> None:
        super().__init__(("127.0.0.1", port), Echo)
        self.name = name
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class Echo(BaseHTTPRequestHandler):
    server: EchoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, line in enumerate((b'{"status":"first"}\n', b'{"status":"success"}\n')):
            if i:
                time.sleep(SLOW_PAUSE)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/_records":
            with self.server.lock:
                return self._send(200, self.server.records)
        if self.path == "/_reset":
            with self.server.lock:
                self.server.records.clear()
            return self._send(200, {})
        try:
            model = str((json.loads(raw) if raw else {}).get("model", ""))
        except (ValueError, AttributeError, RecursionError):  # garbage is echoed, not parsed
            model = ""
        seen = {"upstream": self.server.name, "method": self.command, "target": self.path,
                "body": raw.decode("utf-8", "replace"), "model": model,
                "authorization": self.headers.get("Authorization"),
                "cookie": self.headers.get("Cookie")}
        with self.server.lock:
            self.server.records.append(seen)
        if self.path == "/api/status" and self.command == "GET":
            return self._send(200, {"cloud": {"disabled": True, "source": self.server.name}})
        if self.path == "/teapot":
            return self._send(418, {"error": "short and stout"}, {"Set-Cookie": "up=1"})
        if self.path.startswith("/slow/"):
            return self._stream()
        self._send(200, seen)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def start(port: int, name: str) -> tuple[subprocess.Popen, str]:
    """Start the echo server as its own process on `port`; returns (process, base URL)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__)), str(port), name])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.post(url + "/_reset", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("relay upstream did not start")


def records(url: str) -> list[dict[str, Any]]:
    return requests.get(url + "/_records", timeout=5).json()


def reset(url: str) -> None:
    requests.post(url + "/_reset", timeout=5)


if __name__ == "__main__":
    EchoServer(int(sys.argv[1]), sys.argv[2]).serve_forever()
