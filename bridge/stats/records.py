"""The state database's records as the bridge sees them: backend rows, API keys, request records
and the registry snapshot, with the helpers that turn them into stored rows and back.

Plain dataclasses and pure functions: no connection, no SQL (bridge/stats/store.py runs those).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from bridge.wire.names import ModelName

BACKEND_TYPES = ("mlx", "ollama", "auto")
# Stored field sizes of the request log, so it grows by rows, not by what a request carried:
# longer than any valid model name (host 350 + namespace 80 + model 80 + tag 80), a short error.
MAX_MODEL_CHARS = 600
MAX_ERROR_CHARS = 500
MAX_ENDPOINT_CHARS = 2048


def now_rfc3339() -> str:
    """Current UTC time as RFC3339 with microseconds and a Z (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def model_key(name: str) -> str:
    """Ollama's lookup key (`llama3` == `Llama3:latest`); lower-cased text if not a valid name."""
    parsed = ModelName.try_parse(name)
    return parsed.key if parsed else name.lower()


def norm_endpoint(url: str | None) -> str | None:
    """`http://h:1/` and `http://h:1` are one endpoint."""
    return url.rstrip("/") or None if url else None


def hash_key(secret: str) -> str:
    """How an API key is stored: sha256 hex. The keys are 256-bit random (bridge/http/auth.py),
    so a fast hash is enough: a slow password hash protects guessable secrets, and would cost
    every request its time."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass
class BackendRow:
    """One admin-managed backend for a model; an enabled row overrides the mapping file."""

    id: int
    model_name: str
    backend_type: str  # "mlx" | "ollama" | "auto"
    endpoint_url: str | None
    mlx_model: str | None
    enabled: bool
    priority: int  # higher is tried first
    max_tokens: int | None
    temperature_default: float | None
    timeout_seconds: float | None
    api_key_env: str | None  # the environment variable with the endpoint's key (never the key)
    protocol: str | None  # a remote endpoint's: "ollama" | "openai"; None = by backend_type
    remote_model: str | None  # the name the remote endpoint knows the model by
    weight: float | None  # share of traffic among enabled rows of equal priority (None = 1)
    description: str
    created_at: str  # RFC3339 UTC
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROW_FIELDS = tuple(f.name for f in fields(BackendRow))
READ_ONLY = ("id", "created_at", "updated_at")
WRITABLE = tuple(f for f in ROW_FIELDS if f not in READ_ONLY)


@dataclass
class ApiKey:
    """One API key (never the key itself: its sha256 and the first characters, to recognise it).

    Limits are per key and per bridge process; None means unlimited.
    """

    id: int
    name: str
    prefix: str
    key_hash: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_streams: int | None
    created_at: str
    revoked_at: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["key_hash"]
        return data


KEY_FIELDS = tuple(f.name for f in fields(ApiKey))
KEY_LIMITS = ("requests_per_minute", "tokens_per_minute", "max_streams")


@dataclass
class RequestRecord:
    """One finished request, as the tracker stores it.

    `backend` is who answered ("mlx" or "ollama"); `endpoint` the upstream URL it went to
    (None for MLX); `status` "ok" | "error" | "canceled"; `cached_tokens` the prompt tokens
    served from the prompt cache; `bridge_id` the bridge that served it (the tracker fills it
    in); `api_key` the name of the key it came with; `rid` unique, so a retried write after an
    outage never stores it twice.
    """

    model: str
    backend: str
    endpoint: str | None
    status: str
    prompt_tokens: int
    eval_tokens: int
    ttft_ms: float | None
    latency_ms: float
    tokens_per_sec: float | None
    error: str | None = None
    fallback_from: str | None = None
    ts: str = field(default_factory=now_rfc3339)
    cached_tokens: int = 0
    bridge_id: str | None = None
    api_key: str | None = None
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Snapshot:
    """The registry as the request path sees it: every backend row and key at one version."""

    version: int
    rows: tuple[BackendRow, ...]
    keys: tuple[ApiKey, ...]
    by_model: dict[str, tuple[BackendRow, ...]]  # enabled rows per model key, in plan order

    @classmethod
    def build(cls, version: int, rows: list[BackendRow], keys: list[ApiKey]) -> Snapshot:
        by_model: dict[str, list[BackendRow]] = {}
        for row in sorted(rows, key=lambda r: (-r.priority, r.id)):
            if row.enabled:
                by_model.setdefault(model_key(row.model_name), []).append(row)
        return cls(version, tuple(rows), tuple(keys),
                   {k: tuple(v) for k, v in by_model.items()})


def record_row(r: RequestRecord) -> dict[str, Any]:
    return {
        "ts": r.ts, "model": clip(r.model, MAX_MODEL_CHARS),
        "model_key": clip(model_key(r.model), MAX_MODEL_CHARS), "backend": r.backend,
        "endpoint": clip(norm_endpoint(r.endpoint), MAX_ENDPOINT_CHARS), "status": r.status,
        "prompt_tokens": r.prompt_tokens, "eval_tokens": r.eval_tokens,
        "cached_tokens": r.cached_tokens, "ttft_ms": r.ttft_ms, "latency_ms": r.latency_ms,
        "tokens_per_sec": r.tokens_per_sec, "error": clip(r.error, MAX_ERROR_CHARS),
        "fallback_from": r.fallback_from, "bridge_id": r.bridge_id, "api_key": r.api_key,
        "rid": r.rid,
    }


def clip(text: str | None, limit: int) -> str | None:
    """At most `limit` characters (an ellipsis marks a cut)."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "\u2026"


def writable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Only writable columns reach SQL (column names are never taken from a request)."""
    return {k: values[k] for k in WRITABLE if k in values}


def backend_row(r: Mapping[str, Any]) -> BackendRow:
    data = {k: r[k] for k in ROW_FIELDS}
    data["enabled"] = bool(data["enabled"])
    return BackendRow(**data)
