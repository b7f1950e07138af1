"""An upstream that records what reaches it: a real HTTP server process speaking enough Ollama.

Run: `python tests/recording_upstream.py PORT [REDIRECT_TO]`. Every request is kept (method, path,
headers, body size, model) and listed by `GET /_records`; `POST /_reset` forgets them. Models whose
name starts with `remote` answer a short chat/generate object, others Ollama's 404. Paths under
`/moved/` answer `307 Location: REDIRECT_TO/<rest>` (an endpoint that sends clients elsewhere).
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


class RecordingServer(ThreadingHTTPServer):
    """Holds what its handlers saw."""

    def __init__(self, port: int, redirect_to: str) -> None:
        super().__init__(("127.0.0.1", port), Recorder)
        self.redirect_to = redirect_to
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class Recorder(BaseHTTPRequestHandler):
    server: RecordingServer

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Set-Cookie", "upstream-session=1")  # must not reach the bridge's clients
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

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
        except (ValueError, AttributeError):
            model = ""
        with self.server.lock:
            self.server.records.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers),
                                        "body_bytes": len(raw), "model": model})
        if self.path.startswith("/moved/"):
            target = self.server.redirect_to + self.path[len("/moved"):]
            return self._send(307, {"moved": target}, {"Location": target})
        if self.path == "/api/version":
            return self._send(200, {"version": "0.33.0"})
        if self.path in ("/api/tags", "/api/ps"):
            return self._send(200, {"models": []})
        if not model.startswith("remote"):
            return self._send(404, {"error": f"model '{model}' not found"})
        self._send(200, {"model": model, "created_at": "2025-01-01T00:00:00Z", "response": "ok",
                         "message": {"role": "assistant", "content": "ok"}, "done": True,
                         "done_reason": "stop", "eval_count": 1, "eval_duration": 1000})

    do_GET = do_POST = do_DELETE = do_HEAD = _handle


def start(port: int, redirect_to: str = "") -> tuple[subprocess.Popen, str]:
    """Start the recorder as its own process on `port`; returns (process, base URL)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__)), str(port), redirect_to])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.post(url + "/_reset", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("recording upstream did not start")


def records(url: str, path_prefix: str = "") -> list[dict[str, Any]]:
    """What reached the recorder (requests to `path_prefix...` only, when given)."""
    seen = requests.get(url + "/_records", timeout=5).json()
    return [r for r in seen if r["path"].startswith(path_prefix)]


def reset(url: str) -> None:
    requests.post(url + "/_reset", timeout=5)


if __name__ == "__main__":
    RecordingServer(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "").serve_forever()
