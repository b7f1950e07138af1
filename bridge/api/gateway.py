"""Blueprint: the hybrid MLX/Ollama gateway's endpoints, for scripts written against them.

Thin views over what the Ollama endpoints already compute: the mapping file and admin rows (the
router's plan), the engine's resident models and the default upstream's listing. Only the preload
changes anything; it is the same action as Ollama's `POST /api/generate {"model": m}` (open to
any client, like the rest of the inference API).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, request

from bridge.engine import Done
from bridge.errors import BadRequest, ModelNotFound
from bridge.http.web import context, json_response
from bridge.routing.upstream import redact_url
from bridge.serving.catalog import _key as listing_key
from bridge.serving.catalog import plan_json, served_locally, tag_entry, upstream_models
from bridge.serving.generation import make_job
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.durations import parse_keep_alive
from bridge.wire.jsonbody import parse_body
from bridge.wire.names import InvalidModelName, ModelName
from bridge.wire.options import Options

bp = Blueprint("gateway", __name__)


def _loaded() -> set[str]:
    return {info.name for info in bridge().local.engine.snapshot()}


def _mlx_entry(model: LocalModel, loaded: set[str]) -> dict[str, Any]:
    return {**tag_entry(model), "backend": "mlx", "mlx_model": model.entry.source,
            "policy": model.entry.backend, "loaded": model.entry.name in loaded}


def _display(name: str) -> ModelName:
    try:
        return ModelName.parse(name)
    except InvalidModelName:
        raise BadRequest(f"invalid model name {name!r}") from None


@bp.get("/api/models")
def models() -> Response:
    """Every model, grouped by the backend that serves it: MLX here, or the upstream Ollama."""
    local = served_locally()
    loaded = _loaded()
    remote = upstream_models("/api/tags", {ModelName.parse(m.entry.name).key for m in local})
    return json_response({
        "mlx": [_mlx_entry(m, loaded) for m in local],
        "ollama": [{**e, "backend": "ollama"} for e in remote],
        "upstream": redact_url(bridge().upstream_url)})


@bp.get("/api/models/<path:name>")
def model(name: str) -> Response:
    """One model: who serves it (the plan) and its listing entries; 404 when nobody knows it."""
    parsed = _display(name)
    plan = bridge().router.plan(name)
    mlx = next((t for t in plan.targets if t.local), None)
    local = bridge().local.find(name, mlx.source) if mlx else None
    remote = next((e for e in upstream_models("/api/tags", set())
                   if listing_key(e) == parsed.key), None) if not all(
                       t.local for t in plan.targets) else None
    if local is None and remote is None:
        raise ModelNotFound(parsed.display)
    return json_response({
        "name": parsed.display, "backend": plan.targets[0].backend if plan.targets else None,
        "plan": plan_json(plan), "mlx": _mlx_entry(local, _loaded()) if local else None,
        "ollama": {**remote, "backend": "ollama"} if remote else None})


@bp.get("/api/mlx/models")
def mlx_models() -> Response:
    """Every model the mapping file gives MLX weights, present on disk or not, and if loaded."""
    registry = bridge().registry
    loaded = _loaded()
    rows = []
    for entry in registry.entries():
        path = registry.local_dir(entry)
        rows.append({"name": entry.name, "mlx_model": entry.source, "policy": entry.backend,
                     "present": path is not None, "path": str(path) if path else None,
                     "loaded": entry.name in loaded})
    return json_response({"models": rows})


@bp.post("/api/mlx/load/<path:name>")
def mlx_load(name: str) -> Response:
    """Preload a model into the engine (optional body `{"keep_alive": ...}`), like Ollama's
    empty `/api/generate`: no admin token, since any client can already do exactly that."""
    parsed = _display(name)
    keep_alive = _keep_alive(request.get_data())
    plan = bridge().router.plan(name)
    mlx = next((t for t in plan.targets if t.local), None)
    if mlx is None:
        where = redact_url(plan.targets[0].endpoint) if plan.targets else None
        raise BadRequest(f"model '{parsed.display}' is served by the remote engine at {where} "
                         f"(backend {plan.policy}), not by MLX here: nothing to preload")
    local = bridge().local.require(name, source=mlx.source)
    ctx = context()
    ctx.model, ctx.backend = local.entry.name, "mlx"
    job = make_job(Preload(keep_alive), local, plan, None)
    done = None
    for event in bridge().local.run(job):
        if isinstance(event, Done):
            done = event
    assert done is not None  # the engine ends every job with Done or raises
    return json_response({"model": local.entry.name, "done": True,
                          "done_reason": done.done_reason, "load_duration": done.load_duration})


def _keep_alive(raw: bytes) -> float | None:
    """The optional body's `keep_alive`; any other field is a 400, never silently ignored."""
    if not raw.strip():
        return None
    body = parse_body(raw, "LoadRequest")
    extra = sorted(set(body) - {"keep_alive"})
    if extra:
        raise BadRequest(f"unknown field {extra[0]!r}: this endpoint takes only keep_alive")
    try:
        return parse_keep_alive(body.get("keep_alive"))
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc)) from None


@dataclass
class Preload:
    """What `make_job` reads for a preload: its keep_alive, no options of its own."""

    keep_alive: float | None
    options: Options = field(default_factory=Options)
