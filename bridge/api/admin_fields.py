"""Validation of admin API bodies for backend rows: every error is a 422 naming the field.

>>> check_row({"model_name": "Llama3", "backend_type": "mlx"}, creating=True)
{'model_name': 'Llama3:latest', 'backend_type': 'mlx'}
>>> check_row({"priority": -1}, creating=False)
Traceback (most recent call last):
...
bridge.errors.Unprocessable: priority: must be between 0 and 1000000000
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import Unprocessable
from bridge.routing.registry import KEY_ENV_PREFIX, KEY_ENV_RE, PROTOCOLS
from bridge.stats.perf import BackendStats
from bridge.stats.records import BACKEND_TYPES, READ_ONLY, WRITABLE
from bridge.wire.names import InvalidModelName, ModelName

READ_ONLY_FIELDS = (*READ_ONLY, *BackendStats.__dataclass_fields__)
REQUIRED = ("model_name", "backend_type")
MAX_INT = 1_000_000_000  # keeps every integer well inside SQLite's 64-bit range
_REPO_RE = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

Check = Callable[[str, Any], Any]


def _fail(name: str, why: str) -> Unprocessable:
    return Unprocessable(f"{name}: {why}")


def _model_name(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(name, "must be a string")
    try:
        return ModelName.parse(value).display
    except InvalidModelName:
        raise _fail(name, f"invalid model name {value!r}") from None


def _backend_type(name: str, value: Any) -> str:
    if value not in BACKEND_TYPES:
        raise _fail(name, f"must be one of {', '.join(BACKEND_TYPES)} (got {value!r})")
    return value


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 2048 or any(c.isspace() for c in value):
        raise _fail(name, "must be an http:// or https:// URL")
    if "@" in value:  # user:password@ would be stored, shown and logged: never echoed back either
        raise _fail(name, "must not contain credentials (user:password@); put the key in an "
                          f"environment variable {KEY_ENV_PREFIX}<NAME> and name it in api_key_env")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _fail(name, f"invalid URL {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(name, f"must be an http:// or https:// URL (got {value!r})")
    if parts.query or parts.fragment:
        raise _fail(name, "must be a base URL without query or fragment")
    return value.rstrip("/")


def _key_env(name: str, value: Any) -> str:
    if not isinstance(value, str) or not KEY_ENV_RE.fullmatch(value):
        raise _fail(name, f"must name an environment variable {KEY_ENV_PREFIX}<NAME> (upper case, "
                          "digits, _) holding the endpoint's key; the key itself is never stored")
    return value


def _mlx_model(name: str, value: Any) -> str:
    ok = isinstance(value, str) and 0 < len(value) <= 1024 and (
        _REPO_RE.fullmatch(value) or value.startswith(("/", "~/")))
    if not ok:
        raise _fail(name, "must be a Hugging Face repo id (org/name) or an absolute directory path")
    return value


def _protocol(name: str, value: Any) -> str:
    if value not in PROTOCOLS:
        raise _fail(name, f"must be one of {', '.join(PROTOCOLS)} (got {value!r})")
    return value


def _remote_model(name: str, value: Any) -> str:
    # any name the remote engine knows (a repo id, a path, `gpt-oss-120b`): sent as `model`
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        raise _fail(name, "must be a non-empty string of at most 1024 characters")
    if any(ord(c) < 32 for c in value):
        raise _fail(name, "must not contain control characters")
    return value.strip()


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "must be true or false")
    return value


def _int(low: int) -> Check:
    def check(name: str, value: Any) -> int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise _fail(name, "must be an integer")
        if not low <= value <= MAX_INT:
            raise _fail(name, f"must be between {low} and {MAX_INT}")
        return int(value)
    return check


def _number(positive: bool) -> Check:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(name, "must be a number")
        in_range = (value > 0 if positive else value >= 0) and value <= MAX_INT
        if not (math.isfinite(value) and in_range):
            raise _fail(name, "must be greater than 0" if positive else "must not be negative")
        return float(value)
    return check


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise _fail(name, "must be a string of at most 4096 characters")
    return value


NULLABLE = ("endpoint_url", "mlx_model", "max_tokens", "temperature_default", "timeout_seconds",
            "api_key_env", "protocol", "remote_model", "weight")
CHECKS: dict[str, Check] = {
    "model_name": _model_name,
    "backend_type": _backend_type,
    "endpoint_url": _url,
    "mlx_model": _mlx_model,
    "enabled": _bool,
    "priority": _int(0),
    "max_tokens": _int(1),
    "temperature_default": _number(positive=False),
    "timeout_seconds": _number(positive=True),
    "api_key_env": _key_env,
    "protocol": _protocol,
    "remote_model": _remote_model,
    "weight": _number(positive=True),
    "description": _text,
}
assert set(CHECKS) == set(WRITABLE)


def check_row(body: dict[str, Any], creating: bool) -> dict[str, Any]:
    """Validate a create (all required fields) or a partial update; returns normalized values."""
    read_only = sorted(k for k in body if k in READ_ONLY_FIELDS)
    if read_only:
        raise Unprocessable(f"read-only field(s) cannot be set: {', '.join(read_only)}")
    unknown = sorted(k for k in body if k not in CHECKS)
    if unknown:
        raise Unprocessable(f"unknown field(s): {', '.join(unknown)} "
                            f"(allowed: {', '.join(WRITABLE)})")
    missing = [k for k in REQUIRED if creating and k not in body]
    if missing:
        raise Unprocessable(f"{missing[0]}: required")
    values: dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            if key not in NULLABLE:
                raise _fail(key, "must not be null")
            values[key] = None
        else:
            values[key] = CHECKS[key](key, value)
    return values
