"""Blueprint: the Admin UI (a static app in bridge/ui/ at /ui) and its two read-only views.

The page is plain files shipped in the package (no CDN, works offline); it calls the same API
every client uses (/api/tags, /api/pull, /api/chat, the admin API, /health ...). Two endpoints
exist only for it, read-only and token-free like /api/performance/comparison (counts, sizes and
latencies, no row settings or keys):

- `GET /api/ui/models`: local MLX, upstream and remote (admin-row endpoint) models in one list;
- `GET /api/ui/live?window=&step=`: per-backend series from the request log, the newest
  requests, the engine's queue and the endpoints' circuit breakers.

The Host and CORS checks (bridge/http/security.py) apply to these routes as to every other. The
page's own responses forbid framing and foreign scripts (CSP), so the admin token the page holds
in sessionStorage is never exposed to another origin.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request, send_from_directory

from bridge.errors import BadRequest, StoreUnavailable
from bridge.http.web import json_response, rfc3339
from bridge.routing.upstream import redact_url
from bridge.serving.catalog import remote_models
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.names import ModelName

log = logging.getLogger(__name__)

bp = Blueprint("ui", __name__)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
RECENT = 25  # newest requests shown on the live page
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",  # no clickjacking of the admin buttons
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded bridge serves its new page at once
}


@bp.get("/ui")
@bp.get("/ui/")
def index() -> Response:
    return _page(send_from_directory(UI_DIR, "index.html"))


@bp.get("/ui/<path:asset>")
def asset(asset: str) -> Response:
    """A file of the app; send_from_directory refuses paths outside UI_DIR (404)."""
    return _page(send_from_directory(UI_DIR, asset))


def _page(response: Response) -> Response:
    response.headers.update(PAGE_HEADERS)
    return response


# ---- /api/ui/models ---------------------------------------------------------------------------


@bp.get("/api/ui/models")
def models() -> Response:
    """Every model the bridge can answer for, one row each: name, backend, where, size,
    capabilities, loaded, memory, expires (the upstream's rows as its /api/tags and /api/ps say)."""
    _only_args()
    state = bridge()
    local = _local_rows()
    seen = {_key(r["name"]) for r in local}
    url = state.upstream_url
    upstream, reachable = _endpoint_rows(url, "upstream", None, seen) if url else ([], False)
    seen |= {_key(r["name"]) for r in upstream}
    return json_response({"models": local + upstream + _remote_rows(url, seen),
                          "upstream": redact_url(url), "upstream_reachable": reachable})


def _key(name: str) -> str:
    parsed = ModelName.try_parse(name)
    return parsed.key if parsed else name.lower()


def _local_rows() -> list[dict[str, Any]]:
    """The mapping file's models that MLX may serve, on disk or still to be pulled."""
    state = bridge()
    present: dict[str, LocalModel] = {m.entry.name: m for m in state.local.present()}
    snapshot = state.local.engine.snapshot()
    by_name = {i.name: i for i in snapshot}
    by_path = {i.key: i for i in snapshot}
    rows = []
    for entry in state.registry.entries():
        plan = state.router.plan(entry.name)
        policy = plan.policy
        if policy == "ollama" or not any(t.local for t in plan.targets):
            continue  # the upstream or a remote engine serves it: listed with their models
        model = present.get(entry.name)
        info = by_name.get(entry.name) or (by_path.get(model.key) if model else None)
        rows.append({
            "name": entry.name, "backend": "mlx", "kind": "local", "where": "this bridge (MLX)",
            "policy": policy, "source": entry.source, "present": model is not None,
            "size": model.description.size if model else None,
            "capabilities": model.description.capabilities if model else [],
            "loaded": info is not None, "memory": info.size if info else None,
            "expires_at": rfc3339(info.expires_at) if info else None})
    return rows


def _endpoint_rows(url: str, kind: str, only: set[str] | None,
                   seen: set[str]) -> tuple[list[dict[str, Any]], bool]:
    """An Ollama endpoint's models (its /api/tags joined with its /api/ps), minus `seen` names;
    only the names in `only` when given. (rows, whether the endpoint answered)."""
    upstream = bridge().upstream
    tags = upstream.get_json(url, "/api/tags")
    if tags is None:
        return [], False
    ps = upstream.get_json(url, "/api/ps") or {}
    running = {_key(str(p.get("name") or p.get("model") or "")): p
               for p in ps.get("models") or [] if isinstance(p, dict)}
    rows = []
    for entry in tags.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("name") or entry.get("model") or "")
        key = _key(name)
        if not name or key in seen or (only is not None and key not in only):
            continue
        loaded = running.get(key)
        rows.append({
            "name": name, "backend": "ollama", "kind": kind, "where": redact_url(url),
            "policy": None, "source": None, "present": True, "size": entry.get("size"),
            "capabilities": entry.get("capabilities") or [],
            "loaded": loaded is not None,
            "memory": (loaded.get("size_vram") or loaded.get("size")) if loaded else None,
            "expires_at": loaded.get("expires_at") if loaded else None})
    return rows, True


def _remote_rows(default_url: str | None, seen: set[str]) -> list[dict[str, Any]]:
    """Models that admin rows send to endpoints other than the default upstream."""
    try:
        rows = bridge().store.list_rows()
    except StoreUnavailable as exc:  # the table still shows the local and upstream models
        log.warning("ui models: backend rows unavailable error=%r", exc.message)
        return []
    wanted: dict[str, set[str]] = {}
    for row in rows:
        if row.endpoint_url and row.endpoint_url != (default_url or "").rstrip("/"):
            wanted.setdefault(row.endpoint_url, set()).add(_key(row.model_name))
    found: list[dict[str, Any]] = []
    for url, names in wanted.items():
        found += _endpoint_rows(url, "remote", names, seen)[0]
    # Engines that do not speak Ollama (mlx_lm.server, vLLM...) have no /api/tags to join:
    # the routing's own view of them (catalog.remote_models) lists what is sent there.
    seen = seen | {_key(r["name"]) for r in found}
    for entry in remote_models(seen):
        found.append({
            "name": entry["name"], "backend": "remote", "kind": "remote",
            "where": entry["remote_host"], "policy": None, "source": entry["remote_model"],
            "present": True, "size": None, "capabilities": [], "loaded": None,
            "memory": None, "expires_at": None})
    return found


# ---- /api/ui/live -----------------------------------------------------------------------------


def _only_args(*allowed: str) -> None:
    """A query parameter is honoured or refused, never silently ignored."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        takes = f"only {', '.join(allowed)}" if allowed else "no parameters"
        raise BadRequest(f"unknown query parameter {unknown[0]!r}: this endpoint takes {takes}")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number of seconds from {low} to {high}")
    return int(raw)


@bp.get("/api/ui/live")
def live() -> Response:
    """Per-backend series over the last `window` seconds in `step`-second buckets, the newest
    requests, the engine's queue and health, and the endpoints' breaker states."""
    _only_args("window", "step")
    window = _int_arg("window", 300, 10, 3600)
    step = _int_arg("step", 5, 1, 300)
    state = bridge()
    state.tracker.flush(timeout=0.5)  # the requests that just finished are in the chart
    end = int(time.time()) // step * step
    start = end - max(window // step - 1, 0) * step
    data = state.store.live(start, end, step, RECENT)
    for row in (*data["series"], *data["recent"]):
        row["endpoint"] = redact_url(row["endpoint"])
    for s in data["series"]:
        s["label"] = s["backend"] if s["endpoint"] is None else f"{s['backend']}@{s['endpoint']}"
    engine = state.local.engine
    health = engine.health()
    return json_response({
        **data, "step": step, "window": window, "generated_at": rfc3339(),
        "engine": {"state": health["state"], "queued": health["queued"],
                   "active": health["active"], "num_parallel": health["num_parallel"],
                   "restarts": health["restarts"]},
        "loaded": [{"model": i.name, "size": i.size, "active": i.active,
                    "expires_at": rfc3339(i.expires_at)} for i in engine.snapshot()],
        "endpoints": state.router.breaker.snapshot()})
