"""Blueprint: the backend registry's admin API, the performance comparison and /metrics.

API keys (`/api/keys`: create, list, revoke) are admin calls like the backend rows; the secret of
a new key is in the creation answer only (the store keeps its sha256).

Auth: with `MLX_BRIDGE_ADMIN_TOKEN` set, every call except the model lookup, the performance
comparison and /metrics needs
`Authorization: Bearer <token>` (401 otherwise). Without a token, reads are open and writes are
refused (403). No routing logic here: the router reads the same store on every request, so a
change applies to the next request.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Response, request

from bridge.api.admin_fields import check_row
from bridge.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    StoreUnavailable,
    Unauthorized,
    Unprocessable,
)
from bridge.http.auth import new_secret
from bridge.http.web import json_response, rfc3339
from bridge.routing.upstream import redact_url
from bridge.serving.catalog import plan_json
from bridge.state import bridge
from bridge.stats.metrics import CONTENT_TYPE
from bridge.stats.records import KEY_LIMITS, ROW_FIELDS, ApiKey, BackendRow
from bridge.stats.store import Store
from bridge.wire.jsonbody import parse_body
from bridge.wire.names import InvalidModelName, ModelName

bp = Blueprint("admin", __name__)

BACKENDS = "/api/llm-backends"
KEYS = "/api/keys"
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_LIMIT = 1_000_000_000
NO_TOKEN = ("admin writes are disabled: no admin token is configured. Set MLX_BRIDGE_ADMIN_TOKEN "
            "to a secret in the server's environment, restart it, and send "
            "'Authorization: Bearer <token>' with each admin request")
BAD_TOKEN = "missing or invalid admin token: send 'Authorization: Bearer <MLX_BRIDGE_ADMIN_TOKEN>'"


def _store() -> Store:
    store = getattr(bridge(), "store", None)
    if store is None:
        raise StoreUnavailable("the backend store is not configured on this server")
    return store


def require_admin(write: bool) -> None:
    """401 on a wrong or missing token; 403 for a write when no token is configured."""
    token = bridge().config.admin_token
    if not token:
        if write:
            raise Forbidden(NO_TOKEN)
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # the header arrives latin-1 decoded: back to its raw bytes, compared in constant time
    given = presented.strip().encode("latin-1", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, token.encode("utf-8")):
        raise Unauthorized(BAD_TOKEN)


@bp.after_request
def _challenge(response: Response) -> Response:
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mlx-bridge admin"'
    return response


def _fresh() -> None:
    """Let queued request records reach SQLite first, so stats include the latest requests."""
    tracker = getattr(bridge(), "tracker", None)
    if tracker is not None:
        tracker.flush(timeout=1.0)


def row_json(row: BackendRow, store: Store) -> dict[str, Any]:
    """A row with its read-only stats (a URL's `user:pass@`, from a file older than the check,
    masked)."""
    return {**row.to_dict(), "endpoint_url": redact_url(row.endpoint_url),
            **store.stats(row).to_dict()}


def _row_id(raw: str) -> int:
    # bounded: a huge number would overflow SQLite's integer
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
        raise NotFound(f"backend {raw!r} not found")
    return int(raw)


def _found(row: BackendRow | None, raw: str) -> BackendRow:
    if row is None:
        raise NotFound(f"backend {raw!r} not found")
    return row


def _flag(name: str) -> bool:
    raw = request.args.get(name, "").strip().lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise BadRequest(f"{name} must be true or false")


@bp.get(BACKENDS)
def list_backends() -> Response:
    require_admin(write=False)
    _fresh()
    store = _store()
    rows = store.list_rows(enabled_only=_flag("enabled_only"))
    return json_response([row_json(r, store) for r in rows])  # an array: `jq '.[] | ...'`


@bp.get(f"{BACKENDS}/<row_id>")
def get_backend(row_id: str) -> Response:
    require_admin(write=False)
    _fresh()
    store = _store()
    return json_response(row_json(_found(store.get(_row_id(row_id)), row_id), store))


@bp.get(f"{BACKENDS}/model/<path:model_name>")
def backends_for_model(model_name: str) -> Response:
    """Service lookup (no auth): the row that applies (`jq '.backend_type'`), with the plan.

    The row is the top enabled admin row, else the mapping file's entry in row form (`id` null);
    a model in neither has no row (404, saying where its requests go instead).
    """
    try:
        name = ModelName.parse(model_name).display
    except InvalidModelName:
        raise BadRequest(f"invalid model name {model_name!r}") from None
    store = _store()
    rows = store.rows_for_model(name)
    effective = _effective(name, rows)
    if rows:
        row = row_json(rows[0], store)
    elif effective["source"] == "mappings":
        row = _mapping_row(name, effective)
    else:
        where = effective["endpoint_url"] or "nowhere (no upstream is configured)"
        raise NotFound(f"no backend row for model '{name}': no enabled admin row and no entry in "
                       f"the mapping file; its requests go to the default upstream {where}")
    return json_response({**row, "source": effective["source"],
                          "rows": [row_json(r, store) for r in rows],
                          "effective_backend": effective,
                          "plan": plan_json(bridge().router.plan(name))})


def _mapping_row(name: str, effective: dict[str, Any]) -> dict[str, Any]:
    """The mapping file's entry in the shape of an admin row (it has no id, stats or times)."""
    entry = bridge().registry.lookup(name)
    remote = {"endpoint_url": redact_url(entry.endpoint_url), "protocol": entry.protocol,
              "remote_model": entry.remote_model} if entry is not None else {}
    return {**dict.fromkeys(ROW_FIELDS), "model_name": name,
            "backend_type": effective["backend_type"], "mlx_model": effective["mlx_model"],
            **remote, "enabled": True, "priority": 0, "description": "from the mapping file"}


def _effective(name: str, rows: list[BackendRow]) -> dict[str, Any]:
    """The first choice: the top enabled row, else the mapping file, else the upstream."""
    state = bridge()
    if rows:
        top = rows[0]
        source, backend = "backends", top.backend_type
        mlx_model, endpoint = top.mlx_model, top.endpoint_url
    elif (entry := state.registry.lookup(name)) is not None:  # a remote engine's endpoint too
        source, backend, mlx_model = "mappings", entry.backend, entry.source
        endpoint = entry.endpoint_url
    else:
        source, backend, mlx_model, endpoint = "default", "ollama", None, None
    if backend != "mlx" and endpoint is None:
        endpoint = state.upstream_url
    return {"source": source, "backend_type": backend, "endpoint_url": redact_url(endpoint),
            "mlx_model": mlx_model, "id": rows[0].id if rows else None}


@bp.post(BACKENDS)
def create_backend() -> Response:
    require_admin(write=True)
    values = check_row(parse_body(request.get_data(), "LLMBackend"), creating=True)
    store = _store()
    row = store.create(values)
    response = json_response(row_json(row, store), 201)
    response.headers["Location"] = f"{BACKENDS}/{row.id}"
    return response


@bp.put(f"{BACKENDS}/<row_id>")
def update_backend(row_id: str) -> Response:
    require_admin(write=True)
    ident = _row_id(row_id)
    values = check_row(parse_body(request.get_data(), "LLMBackend"), creating=False)
    store = _store()
    return json_response(row_json(_found(store.update(ident, values), row_id), store))


@bp.delete(f"{BACKENDS}/<row_id>")
def delete_backend(row_id: str) -> Response:
    require_admin(write=True)
    if not _store().delete(_row_id(row_id)):
        raise NotFound(f"backend {row_id!r} not found")
    return Response(status=204)


@bp.post(f"{BACKENDS}/<row_id>/toggle")
def toggle_backend(row_id: str) -> Response:
    require_admin(write=True)
    store = _store()
    return json_response(row_json(_found(store.toggle(_row_id(row_id)), row_id), store))


@bp.get("/api/performance/comparison")
def performance_comparison() -> Response:
    """Backends side by side per model (`?model=`, `?since=` RFC3339); no token, like /metrics:
    it shows counts and latencies, no endpoint keys or row settings."""
    model = request.args.get("model") or None
    if model is not None:
        try:
            model = ModelName.parse(model).display
        except InvalidModelName:
            raise BadRequest(f"invalid model name {model!r}") from None
    since = _since(request.args.get("since"))
    _fresh()
    store = _store()
    usage = store.usage(since)
    return json_response({"models": store.comparison(model, since), "model": model,
                          "since": since, "generated_at": rfc3339(),
                          "bridges": usage["bridges"], "keys": usage["keys"]})


def _since(raw: str | None) -> str | None:
    """An RFC3339 time, normalized to the stored form so text comparison orders it."""
    if not raw:
        return None
    try:
        dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        return rfc3339(dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc))
    except (ValueError, OverflowError):
        raise BadRequest("since must be an RFC3339 time such as 2025-01-31T00:00:00Z "
                         f"(got {raw!r})") from None


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text (no auth, like most exporters; bind the bridge to localhost to keep it
    private)."""
    registry = bridge().metrics
    if registry is None:
        raise NotFound("metrics are not enabled on this server")
    return Response(registry.exposition(), content_type=CONTENT_TYPE)


# ---- API keys --------------------------------------------------------------------------------


def _key_limits(body: dict[str, Any], partial: bool = False) -> dict[str, int | None]:
    """The key's limits: each a positive integer or null (unlimited); `partial`: only those
    the body names."""
    limits: dict[str, int | None] = {}
    for name in KEY_LIMITS:
        if partial and name not in body:
            continue
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 < value <= MAX_LIMIT):
            raise Unprocessable(f"{name}: must be a positive integer or null")
        limits[name] = value
    return limits


def _key_json(key: ApiKey, usage: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**key.to_dict(), "usage": usage.get(key.name)}


@bp.post(KEYS)
def create_key() -> Response:
    """A new key: `{"name", "requests_per_minute"?, "tokens_per_minute"?, "max_streams"?}`;
    the answer carries the key itself (`key`), shown this once."""
    require_admin(write=True)
    body = parse_body(request.get_data(), "APIKey")
    unknown = sorted(set(body) - {"name", *KEY_LIMITS})
    if unknown:
        raise Unprocessable(f"unknown field(s): {', '.join(unknown)} "
                            f"(allowed: name, {', '.join(KEY_LIMITS)})")
    name = body.get("name")
    if not isinstance(name, str) or not KEY_NAME_RE.fullmatch(name):
        raise Unprocessable("name: required, 1-64 characters of letters, digits, '_', '.', '-'")
    secret = new_secret()
    key = _store().create_key(name, secret, _key_limits(body))
    response = json_response({**_key_json(key, {}), "key": secret}, 201)
    response.headers["Location"] = f"{KEYS}/{key.id}"
    return response


@bp.get(KEYS)
def list_keys() -> Response:
    require_admin(write=False)
    _fresh()
    store = _store()
    usage = {u["api_key"]: u for u in store.usage()["keys"]}
    return json_response([_key_json(k, usage) for k in store.list_keys()])


@bp.get(f"{KEYS}/<key_id>")
def get_key(key_id: str) -> Response:
    require_admin(write=False)
    _fresh()
    store = _store()
    key = store.get_key(_row_id(key_id))
    if key is None:
        raise NotFound(f"key {key_id!r} not found")
    usage = {u["api_key"]: u for u in store.usage()["keys"]}
    return json_response(_key_json(key, usage))


@bp.put(f"{KEYS}/<key_id>")
def update_key(key_id: str) -> Response:
    """Change a key's limits (`requests_per_minute`, `tokens_per_minute`, `max_streams`; null
    lifts one); applied on every bridge from its next request."""
    require_admin(write=True)
    ident = _row_id(key_id)
    body = parse_body(request.get_data(), "APIKey")
    unknown = sorted(set(body) - set(KEY_LIMITS))
    if unknown:
        raise Unprocessable(f"unknown or read-only field(s): {', '.join(unknown)} "
                            f"(allowed: {', '.join(KEY_LIMITS)})")
    key = _store().update_key(ident, _key_limits(body, partial=True))
    if key is None:
        raise NotFound(f"key {key_id!r} not found")
    return json_response(_key_json(key, {}))


@bp.delete(f"{KEYS}/<key_id>")
def revoke_key(key_id: str) -> Response:
    """Revoke a key: refused on every bridge from its next request (kept for its usage)."""
    require_admin(write=True)
    if _store().revoke_key(_row_id(key_id)) is None:
        raise NotFound(f"key {key_id!r} not found")
    return Response(status=204)
