"""Forwarding to the upstream Ollama: raw bodies, streamed back chunk by chunk as they arrive."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import requests
from flask import Response

from .errors import ShuttingDown, UpstreamError
from .web import dumps

log = logging.getLogger(__name__)

# RFC 7230 hop-by-hop headers, plus the ones the WSGI server recomputes.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "content-length", "host", "content-encoding",
}
LISTING_TIMEOUT = (1.0, 3.0)
HEALTH_TIMEOUT = (0.5, 0.5)  # /api/tags and /api/ps must answer even when the upstream hangs


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached at all (connect failure): safe to try elsewhere."""


class Upstream:
    """HTTP client for upstream Ollama servers (one pooled session per thread)."""

    def __init__(self, connect_timeout: float = 3.0, read_timeout: float = 300.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()
        self.stopping = threading.Event()  # set when the grace period ends: relays stop at the next chunk
        self._streams: weakref.WeakSet[requests.Response] = weakref.WeakSet()
        self._streams_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def open(self, base_url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, read_timeout: float | None = None) -> requests.Response:
        """Send a request and return the streaming response (status untouched)."""
        url = base_url.rstrip("/") + path
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in HOP_BY_HOP}
        sent["Accept-Encoding"] = "identity"  # relay bytes as they are; no re-compression
        try:
            resp = self.session.request(
                method, url, data=body, headers=sent, stream=True,
                timeout=(self.connect_timeout, read_timeout or self.read_timeout),
            )
        except requests.ConnectionError as exc:
            raise UpstreamUnavailable(f"upstream Ollama at {base_url} is not reachable: {_reason(exc)}") from None
        except requests.Timeout:
            raise UpstreamError(f"upstream Ollama at {base_url} timed out", status=504) from None
        except requests.RequestException as exc:
            raise UpstreamError(f"upstream Ollama at {base_url} failed: {_reason(exc)}") from None
        with self._streams_lock:
            self._streams.add(resp)
        return resp

    def stop(self) -> None:
        """End the relays: set `stopping` and cut the upstream connections they may be blocked on."""
        self.stopping.set()
        with self._streams_lock:
            streams = list(self._streams)
        for resp in streams:
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once

    def get_json(self, base_url: str, path: str) -> dict[str, Any] | None:
        """A small GET for listings; None when the upstream is down or answers garbage."""
        try:
            resp = self.session.get(base_url.rstrip("/") + path, timeout=LISTING_TIMEOUT)
            resp.raise_for_status()
            data = resp.json()
        except (requests.RequestException, ValueError) as exc:
            log.debug("upstream listing failed url=%s path=%s error=%s", base_url, path, exc)
            return None
        return data if isinstance(data, dict) else None

    def reachable(self, base_url: str) -> bool:
        try:
            # /health must stay fast even when the upstream accepts connections but never answers.
            return self.session.get(base_url.rstrip("/") + "/api/version", timeout=HEALTH_TIMEOUT).ok
        except requests.RequestException:
            return False


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


OnFinal = Callable[[dict[str, Any] | None, str | None, float | None], None]


def relay(resp: requests.Response, on_final: OnFinal, stopping: threading.Event | None = None) -> Response:
    """Stream an upstream response back unchanged; `on_final(final, error, first_chunk_at)` runs last.

    Once `stopping` is set (the server's grace period is over) the relay ends at the next chunk
    with a final error line, like the engine's streams, instead of being cut when the worker exits.
    """
    headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
    content_type = resp.headers.get("Content-Type", "")
    kind = "sse" if "event-stream" in content_type else "ndjson" if "json" in content_type else None
    body = _relay_body(resp, kind, on_final, stopping or threading.Event())
    return Response(body, status=resp.status_code, headers=headers)


def _error_tail(kind: str | None, partial: bool, message: str) -> Iterator[bytes]:
    """The stream's last line for a relay that cannot finish: NDJSON line or SSE error event."""
    if kind == "ndjson":
        yield (("\n" if partial else "") + dumps({"error": message}) + "\n").encode()
    elif kind == "sse":  # the OpenAI shape; the openai SDK raises APIError on it
        error = {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
        yield (("\n\n" if partial else "") + "data: " + dumps(error) + "\n\n").encode()


def _relay_body(resp: requests.Response, kind: str | None, on_final: OnFinal,
                stopping: threading.Event) -> Iterator[bytes]:
    scanner = FinalLineScanner()
    error: str | None = None
    first: float | None = None
    try:
        for chunk in resp.iter_content(chunk_size=None):
            if stopping.is_set():
                error = ShuttingDown().message
                yield from _error_tail(kind, scanner.partial, error)
                break
            first = first or time.perf_counter()
            scanner.feed(chunk)
            yield chunk
    except requests.RequestException as exc:
        error = ShuttingDown().message if stopping.is_set() else f"upstream connection lost: {_reason(exc)}"
        log.warning("upstream stream broken url=%s error=%s", resp.url, exc)
        yield from _error_tail(kind, scanner.partial, error)
    finally:
        resp.close()
        scanner.close()
        on_final(scanner.final, error or scanner.error, first)


class FinalLineScanner:
    """Watches NDJSON bytes going by and keeps the last `done: true` object (for metrics)."""

    def __init__(self) -> None:
        self.buf = b""
        self.final: dict[str, Any] | None = None
        self.error: str | None = None

    @property
    def partial(self) -> bool:
        return bool(self.buf)

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self._look(line)
        if len(self.buf) > 1 << 20 and b'"done"' not in self.buf:
            self.buf = b""  # a huge non-NDJSON body (a blob): nothing to scan for

    def _look(self, line: bytes) -> None:
        if b'"done"' not in line and b'"error"' not in line and b'"status"' not in line:
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict):
            if obj.get("done") is True or obj.get("status") == "success":
                self.final = obj
            if isinstance(obj.get("error"), str):
                self.error = obj["error"]

    def close(self) -> None:
        if self.buf.strip():
            self._look(self.buf)

