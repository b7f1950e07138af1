"""Forwarding to the upstream Ollama: raw bodies, streamed back chunk by chunk as they arrive."""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3
from flask import Response

from bridge.errors import ServerBusy, ShuttingDown, UpstreamError
from bridge.http.web import dumps
from bridge.wire.native_out import error_line
from bridge.wire.openai_out import error_object

log = logging.getLogger(__name__)

# The only client headers an upstream sees: what it needs to parse the body and answer in kind.
# Authorization, Cookie, X-Api-Key and the rest are the client's business with the bridge; an
# endpoint that needs credentials gets them from the row's `api_key_env`, never from the client.
FORWARDED_HEADERS = ("content-type", "accept", "user-agent", "x-request-id")
# The only upstream response headers relayed back (Set-Cookie, Location, WWW-Authenticate stay
# there).
RELAYED_HEADERS = ("content-type", "cache-control", "x-accel-buffering")
LISTING_TIMEOUT = (1.0, 3.0)
CHUNK_BYTES = 1 << 16
HEALTH_TIMEOUT = (0.5, 0.5)  # /api/tags and /api/ps must answer even when the upstream hangs


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached at all (connect failure): safe to try elsewhere.

    `refused` is True when nothing listens there (connection refused), as opposed to a timeout
    or a name that does not resolve: the upstream Ollama is not running.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def redact_url(url: str | None) -> str | None:
    """A URL as it may be shown (health, errors, logs, the request log): `user:pass@` removed.

    >>> redact_url("http://me:secret@10.0.0.5:11434/x")
    'http://***@10.0.0.5:11434/x'
    >>> redact_url("http://127.0.0.1:11435")
    'http://127.0.0.1:11435'
    """
    if not url or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


# Worker threads never given to remote requests: /api/version, local models and admin keep them.
RESERVED_THREADS = 8


def remote_cap(threads: int) -> int:
    """Requests to remotes allowed in flight on a worker of `threads` threads."""
    return max(threads - RESERVED_THREADS, 1)


class Upstream:
    """HTTP client for upstream Ollama servers (one pooled session per thread)."""

    def __init__(self, connect_timeout: float = 3.0, read_timeout: float = 300.0,
                 max_in_flight: int | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # Requests to remotes at once (None: no cap). Each holds one of the worker's threads until
        # its answer ends; a silent or trickling remote holds it for the whole timeout, so without
        # a cap enough of them take every thread and /api/version waits (70 took it 29 s).
        self.max_in_flight = max_in_flight
        self._opening = 0  # requests sent whose headers have not come back yet
        self._local = threading.local()
        # set when the grace period ends: relays stop at the next chunk
        self.stopping = threading.Event()
        self._streams: weakref.WeakSet[requests.Response] = weakref.WeakSet()
        self._streams_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            # A cookie one upstream answer sets must never ride along on another client's request.
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            self._local.session = session
        return self._local.session

    def open(self, base_url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, read_timeout: float | None = None,
             api_key: str | None = None, who: str = "upstream Ollama") -> requests.Response:
        """Send a request and return the streaming response (status untouched, never redirected).

        Only FORWARDED_HEADERS of `headers` are sent; `api_key` (from configuration) becomes
        `Authorization: Bearer`; `who` names the endpoint in error messages.
        """
        url = base_url.rstrip("/") + path
        shown = redact_url(base_url)
        self._admit()
        try:
            resp = self._send(method, url, shown, body, headers, read_timeout, api_key, who)
        finally:
            with self._streams_lock:
                self._opening -= 1
        with self._streams_lock:
            self._streams.add(resp)
        return resp

    def _admit(self) -> None:
        """Count a request to a remote in, or refuse it (503) when the cap is reached: what is
        opening plus the answers still being read (a closed or collected one no longer counts)."""
        with self._streams_lock:
            live = sum(1 for r in self._streams if not getattr(r.raw, "closed", True))
            if self.max_in_flight is not None and self._opening + live >= self.max_in_flight:
                raise ServerBusy(f"server busy: {self.max_in_flight} requests to remote "
                                 "endpoints are in flight already (the limit keeps threads for "
                                 "everyone else; MLX_BRIDGE_THREADS raises it); try again")
            self._opening += 1

    def _send(self, method: str, url: str, shown: str, body: bytes | None,
              headers: dict[str, str] | None, read_timeout: float | None, api_key: str | None,
              who: str) -> requests.Response:
        sent = {k: v for k, v in (headers or {}).items() if k.lower() in FORWARDED_HEADERS}
        sent["Accept-Encoding"] = "identity"  # relay bytes as they are; no re-compression
        if api_key:
            sent["Authorization"] = f"Bearer {api_key}"
        try:
            resp = self.session.request(
                method, url, data=body, headers=sent, stream=True, allow_redirects=False,
                timeout=(self.connect_timeout, read_timeout or self.read_timeout),
            )
        except requests.ConnectionError as exc:
            reason = _reason(exc)
            raise UpstreamUnavailable(f"{who} at {shown} is not reachable: {reason}",
                                      refused=reason == "connection refused") from None
        except requests.Timeout:
            raise UpstreamError(f"{who} at {shown} timed out", status=504) from None
        except requests.RequestException as exc:
            raise UpstreamError(f"{who} at {shown} failed: {_reason(exc)}") from None
        return resp

    def stop(self) -> None:
        """End the relays: set `stopping` and cut the upstream connections they may be blocked
        on."""
        self.stopping.set()
        with self._streams_lock:
            streams = list(self._streams)
        for resp in streams:
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once

    def get_json(self, base_url: str, path: str,
                 api_key: str | None = None) -> dict[str, Any] | None:
        """A small GET for listings; None when the upstream is down or answers garbage."""
        try:
            resp = self.session.get(base_url.rstrip("/") + path, timeout=LISTING_TIMEOUT,
                                    allow_redirects=False, headers=_auth(api_key))
            if resp.status_code != 200:
                raise requests.HTTPError(f"HTTP {resp.status_code}")
            data = resp.json()
        except (requests.RequestException, ValueError) as exc:
            log.debug("upstream listing failed url=%s path=%s error=%s", redact_url(base_url), path,
                      _reason(exc))
            return None
        return data if isinstance(data, dict) else None

    def probe(self, base_url: str, protocol: str = "ollama",
              api_key: str | None = None) -> str | None:
        """None when the endpoint answers its protocol's cheapest GET (Ollama: /api/version,
        OpenAI: /v1/models), else why not ("connection refused", "HTTP 401", ...)."""
        path = "/v1/models" if protocol == "openai" else "/api/version"
        try:
            # /health must stay fast even when the upstream accepts connections but never answers.
            resp = self.session.get(base_url.rstrip("/") + path, timeout=HEALTH_TIMEOUT,
                                    allow_redirects=False, headers=_auth(api_key), stream=True)
            resp.close()  # the status is the answer: a big model list is not read
        except requests.RequestException as exc:
            return _reason(exc)
        return None if resp.status_code == 200 else f"HTTP {resp.status_code}"

    def reachable(self, base_url: str) -> bool:
        return self.probe(base_url) is None


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def iter_chunks(resp: requests.Response) -> Iterator[bytes]:
    """A streamed body's bytes as they arrive.

    requests' `iter_content(None)` reads a body sent without chunked encoding (HTTP/1.0 servers
    such as mlx_lm.server stream SSE that way) to its very end before yielding anything;
    `read1` returns whatever has arrived.
    """
    raw = resp.raw
    if getattr(raw, "chunked", True) or not hasattr(raw, "read1"):
        yield from resp.iter_content(chunk_size=None)
        return
    try:
        while data := raw.read1(CHUNK_BYTES, decode_content=True):  # as iter_content does
            yield data
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.ConnectionError(str(exc)) from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__


OnFinal = Callable[[dict[str, Any] | None, str | None, float | None], None]


def relay(resp: requests.Response, on_final: OnFinal,
          stopping: threading.Event | None = None) -> Response:
    """Stream an upstream response back unchanged; `on_final(final, error, first_chunk_at)` runs
    last.

    Once `stopping` is set (the server's grace period is over) the relay ends at the next chunk
    with a final error line, like the engine's streams, instead of being cut when the worker exits.
    """
    headers = [(k, v) for k, v in resp.headers.items() if k.lower() in RELAYED_HEADERS]
    content_type = resp.headers.get("Content-Type", "")
    kind = "sse" if "event-stream" in content_type else "ndjson" if "json" in content_type else None
    body = _relay_body(resp, kind, on_final, stopping or threading.Event())
    return Response(body, status=resp.status_code, headers=headers)


def _error_tail(kind: str | None, partial: bool, message: str) -> Iterator[bytes]:
    """The stream's last line for a relay that cannot finish: NDJSON line or SSE error event."""
    if kind == "ndjson":
        yield (("\n" if partial else "") + dumps(error_line(message)) + "\n").encode()
    elif kind == "sse":  # the OpenAI shape; the openai SDK raises APIError on it
        error = error_object(message)
        yield (("\n\n" if partial else "") + "data: " + dumps(error) + "\n\n").encode()


def _relay_body(resp: requests.Response, kind: str | None, on_final: OnFinal,
                stopping: threading.Event) -> Iterator[bytes]:
    scanner = FinalLineScanner()
    streamed = kind == "sse" or "x-ndjson" in resp.headers.get("Content-Type", "")
    error: str | None = None
    first: float | None = None
    try:
        for chunk in iter_chunks(resp):
            if stopping.is_set():
                error = ShuttingDown().message
                yield from _error_tail(kind, scanner.partial, error)
                break
            first = first or time.perf_counter()
            scanner.feed(chunk)
            yield chunk
        else:
            scanner.close()
            if streamed and resp.status_code < 300 and not scanner.ended:
                # The upstream closed the connection mid-answer (a crash, a kill): without a
                # last line the client would take the partial answer for a whole one.
                error = "upstream stream ended before the answer was complete"
                log.warning("upstream stream cut url=%s", redact_url(resp.url))
                yield from _error_tail(kind, scanner.partial, error)
    except requests.RequestException as exc:
        error = (ShuttingDown().message if stopping.is_set()
                 else f"upstream connection lost: {_reason(exc)}")
        log.warning("upstream stream broken url=%s error=%s", redact_url(resp.url), _reason(exc))
        yield from _error_tail(kind, scanner.partial, error)
    finally:
        resp.close()
        scanner.close()
        on_final(scanner.final, error or scanner.error, first)


# The SSE event types that end an Anthropic Messages or Responses API stream.
_LAST_EVENTS = (b"message_stop", b"response.completed", b"response.incomplete",
                b"response.failed", b"error")


class FinalLineScanner:
    """Watches NDJSON bytes going by and keeps the last `done: true` object (for metrics); in an
    OpenAI or Anthropic answer (JSON or SSE), the token counts of its `usage`."""

    def __init__(self) -> None:
        self.buf = b""
        self.final: dict[str, Any] | None = None
        self.error: str | None = None
        self.ended = False  # the stream's own last event went by (an answer not cut short)

    @property
    def partial(self) -> bool:
        return bool(self.buf)

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self._look(line)
        if len(self.buf) > 1 << 20:  # a blob, or a line no final object is that long: not
            self.buf = b""  # kept (an endless line would grow the bridge without bound)

    def _look(self, line: bytes) -> None:
        if line.startswith(b"event:"):  # Anthropic's and the Responses API's last events
            self.ended = self.ended or line[6:].strip() in _LAST_EVENTS
            return
        if line.startswith(b"data:"):  # an SSE event of the /v1 layers
            line = line[5:].strip()
            if line == b"[DONE]":  # Chat Completions' end
                self.ended = True
                return
        if not any(k in line for k in (b'"done"', b'"error"', b'"status"', b'"usage"')):
            return
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, dict):
            if obj.get("done") is True or obj.get("status") == "success":
                self.final, self.ended = obj, True
            elif isinstance(obj.get("usage"), dict):  # OpenAI's / Anthropic's token counts
                usage = obj["usage"]
                self.final = {
                    "prompt_eval_count": usage.get("prompt_tokens") or usage.get("input_tokens"),
                    "eval_count": usage.get("completion_tokens") or usage.get("output_tokens")}
            if obj.get("error"):  # an error line or event ends a stream too
                self.ended = True
                if isinstance(obj["error"], str):
                    self.error = obj["error"]

    def close(self) -> None:
        if self.buf.strip():
            self._look(self.buf)
        self.buf = b""

