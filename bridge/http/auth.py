"""API keys on the model endpoints, and their per-key limits (docs/registry.md, "API keys").

Off unless `MLX_BRIDGE_REQUIRE_KEYS=1`. Then every request needs `Authorization: Bearer <key>`
(what the ollama and openai clients send), except the open paths (`/`, `/api/version`, `/health`,
`/metrics`, the performance comparison, the Admin UI and its read-only views) and the admin API,
which has its own token. The admin
token is accepted as a key too (an operator's own calls, never limited).

Keys are made and revoked through the admin API (`/api/keys`, bridge/api/admin.py) and stored
hashed (bridge/stats/records.py `hash_key`); the request path looks a key up in the store's
snapshot, so a key revoked on any bridge is refused on every bridge from its next request.

Limits, each optional per key, counted in this bridge process over a sliding 60-second window:
requests per minute, tokens per minute (prompt + generated, counted when a request ends, so one
request may pass the limit; the next is refused) and concurrent streams (requests whose response
has not closed). Over a limit: 429 with `Retry-After` (seconds until the window frees a slot).
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, Response, g, request

from bridge.config import Config
from bridge.errors import TooManyRequests, Unauthorized
from bridge.state import bridge
from bridge.stats.metrics import Metrics
from bridge.stats.records import ApiKey, RequestRecord, hash_key
from bridge.stats.store import Store

log = logging.getLogger(__name__)

KEY_PREFIX = "mlxb-"
WINDOW = 60.0  # seconds: the limits are per minute
LOG_EVERY = 10.0  # seconds between two "over its limit" lines for one key
# /api/health is /health's answer under the gateway's name: a probe needs no key for either
OPEN_PATHS = frozenset({"/", "/api/version", "/health", "/api/health", "/metrics",
                        "/api/performance/comparison", "/ui"})
# the admin token guards the admin API; the Admin UI's page and its read-only views
# (/ui/..., /api/ui/...) are token-free like the comparison
ADMIN_PREFIXES = ("/api/llm-backends", "/api/keys", "/ui/", "/api/ui/")
NO_KEY = ("missing API key: send 'Authorization: Bearer <key>' (keys are required on this "
          "server; an administrator creates them with POST /api/keys)")
BAD_KEY = "invalid or revoked API key"


def new_secret() -> str:
    """A new key: 256 random bits (so a plain sha256 of it is safe to store)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(ADMIN_PREFIXES)


@dataclass
class _Usage:
    """One key's recent use in this process."""

    requests: deque[float] = field(default_factory=deque)  # admission times in the window
    tokens: deque[tuple[float, int]] = field(default_factory=deque)  # (end time, tokens)
    token_sum: int = 0
    streams: int = 0


class KeyLimiter:
    """Sliding-window limits per key name; thread-safe, in memory (per bridge process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def admit(self, key: ApiKey) -> None:
        """Count one request against `key`, or raise TooManyRequests (nothing counted)."""
        with self._lock:
            now = self.clock()
            u = self._usage.setdefault(key.name, _Usage())
            self._expire(u, now)
            if key.max_streams is not None and u.streams >= key.max_streams:
                raise TooManyRequests(f"API key {key.name!r}: {key.max_streams} concurrent "
                                      "streams at most; retry when one ends", 1)
            rpm = key.requests_per_minute
            if rpm is not None and len(u.requests) >= rpm:
                raise TooManyRequests(f"API key {key.name!r}: {rpm} requests per minute at "
                                      "most", _seconds(u.requests[-rpm] + WINDOW - now))
            tpm = key.tokens_per_minute
            if tpm is not None and u.token_sum >= tpm:
                raise TooManyRequests(f"API key {key.name!r}: {tpm} tokens per minute at most",
                                      _seconds(self._tokens_free_at(u, tpm) - now))
            if rpm is not None:
                u.requests.append(now)
            u.streams += 1

    def release(self, name: str) -> None:
        """A request's response closed: its stream slot is free."""
        with self._lock:
            u = self._usage.get(name)
            if u is not None and u.streams > 0:
                u.streams -= 1

    def add_tokens(self, rec: RequestRecord) -> None:
        """A finished request's tokens count against its key (the Tracker calls this)."""
        n = max(rec.prompt_tokens, 0) + max(rec.eval_tokens, 0)
        if rec.api_key is None or n == 0:
            return
        with self._lock:
            u = self._usage.setdefault(rec.api_key, _Usage())
            u.tokens.append((self.clock(), n))
            u.token_sum += n

    def streams(self, name: str) -> int:
        with self._lock:
            u = self._usage.get(name)
            return u.streams if u else 0

    @staticmethod
    def _expire(u: _Usage, now: float) -> None:
        while u.requests and u.requests[0] <= now - WINDOW:
            u.requests.popleft()
        while u.tokens and u.tokens[0][0] <= now - WINDOW:
            u.token_sum -= u.tokens.popleft()[1]

    @staticmethod
    def _tokens_free_at(u: _Usage, tpm: int) -> float:
        """When enough tokens have left the window for the sum to drop below `tpm`."""
        total = u.token_sum
        for at, n in u.tokens:
            total -= n
            if total < tpm:
                return at + WINDOW
        return u.tokens[-1][0] + WINDOW if u.tokens else 0.0


def _seconds(delta: float) -> int:
    return max(1, math.ceil(delta))


class KeyGate:
    """The app's key check: whether keys are required, the store to look them up in, limits."""

    def __init__(self, config: Config, store: Store, metrics: Metrics) -> None:
        self.required = config.require_keys
        self.admin_token = config.admin_token
        self.store = store
        self.metrics = metrics
        self.limiter = KeyLimiter()
        self._logged: dict[str, float] = {}  # key name -> when its last refusal was logged

    def authenticate(self, header: str) -> ApiKey | None:
        """The key a request's Authorization header names; None for the admin token."""
        scheme, _, presented = header.partition(" ")
        secret = presented.strip()
        if scheme.lower() != "bearer" or not secret:
            self.metrics.key_rejected.labels("-", "missing").inc()
            raise Unauthorized(NO_KEY)
        token = self.admin_token
        if token and hmac.compare_digest(secret.encode("latin-1", "replace"),
                                         token.encode("utf-8")):
            return None
        # a dict lookup by the hash: its timing says nothing about any stored key
        key = self.store.active_keys().get(hash_key(secret))
        if key is None:
            self.metrics.key_rejected.labels("-", "invalid").inc()
            raise Unauthorized(BAD_KEY)
        return key

    def admit(self, key: ApiKey) -> None:
        try:
            self.limiter.admit(key)
        except TooManyRequests as exc:
            reason = "streams" if "streams" in exc.message else (
                "tokens" if "tokens per minute" in exc.message else "requests")
            self.metrics.key_rejected.labels(key.name, reason).inc()
            now = time.monotonic()
            if now - self._logged.get(key.name, -LOG_EVERY) >= LOG_EVERY:  # not one per refusal
                self._logged[key.name] = now
                log.warning("api key over its limit key=%s reason=%s retry_after=%d", key.name,
                            reason, exc.retry_after)
            raise


def presented_key() -> str:
    """The request's credential as an Authorization value: `Authorization`, else Anthropic's
    `x-api-key` (the anthropic SDK and Claude Code with ANTHROPIC_API_KEY send only that)."""
    header = request.headers.get("Authorization", "")
    api_key = request.headers.get("x-api-key", "")
    return header if header or not api_key else f"Bearer {api_key}"


def check_key() -> None:
    """before_request: 401 without a valid key, 429 over a key's limit (when keys are on)."""
    state = bridge()
    gate = state.keys
    if gate is None or not gate.required or request.method == "OPTIONS" \
            or open_path(request.path):
        return
    key = gate.authenticate(presented_key())
    if key is None:
        return
    gate.admit(key)
    from bridge.http.web import context  # web installs this hook: import late, no cycle

    context().api_key = key.name
    g.key_slot = key.name  # freed when the response closes (release_slot)


def release_slot(response: Response) -> Response:
    """after_request: free the key's stream slot once the whole response is sent."""
    name = g.pop("key_slot", None)
    if name is not None:
        limiter = bridge().keys.limiter
        response.call_on_close(lambda: limiter.release(name))
    return response


def challenge(response: Response) -> Response:
    if response.status_code == 401 and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mlx-bridge"'
    return response


def warn_if_exposed(config: Config, store: Store) -> None:
    """At start: a server others can reach should not be open to all of them."""
    if not config.require_keys:
        if not config.host.is_loopback:
            log.warning("bound to a non-loopback address without API keys: anyone who can reach "
                        "host=%s can use every model; set MLX_BRIDGE_REQUIRE_KEYS=1 and create "
                        "keys (docs/registry.md)", config.host.bind)
        return
    try:
        count = len(store.active_keys())
    except Exception:  # the database is down: the check runs again on each request anyway
        return
    if count == 0 and not config.admin_token:
        log.warning("API keys are required but none exists and no admin token is set: every "
                    "model request will be refused; set MLX_BRIDGE_ADMIN_TOKEN and create a key "
                    "with POST /api/keys")


def install(app: Flask) -> None:
    """Register the key check (after the Host/CORS guard and the request context)."""
    app.before_request(check_key)
    app.after_request(release_slot)
    app.after_request(challenge)
