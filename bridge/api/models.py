"""Blueprint: liveness, version, and the model listings (/api/tags, /api/ps, /api/show,
/api/delete)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from bridge import __version__
from bridge.errors import BadRequest, BridgeError, ModelNotFound
from bridge.http.web import json_response, rfc3339
from bridge.routing.dispatch import dispatch
from bridge.routing.upstream import redact_url
from bridge.serving.catalog import endpoint_health, served_locally, tag_entry, upstream_models
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.jsonbody import Fields, parse_body
from bridge.wire.names import InvalidModelName, ModelName

bp = Blueprint("models", __name__)

OLLAMA_VERSION = "0.33.0"  # the protocol level we speak; clients gate features on it


@bp.route("/", methods=["GET", "HEAD"])
def root() -> Response:
    return Response("Ollama is running", content_type="text/plain; charset=utf-8")


@bp.route("/api/version", methods=["GET", "HEAD"])
def version() -> Response:
    return json_response({"version": OLLAMA_VERSION})


@bp.get("/api/status")
def status() -> Response:
    """Ollama's newer `{"cloud": {"disabled", "source"}}`: the upstream's own answer when it
    gives one (cloud models are forwarded to it), else cloud off: MLX serves no cloud model."""
    state = bridge()
    url = state.upstream_url
    data = state.upstream.get_json(url, "/api/status") if url else None
    cloud = data.get("cloud") if isinstance(data, dict) else None
    if isinstance(cloud, dict) and isinstance(cloud.get("disabled"), bool):
        return json_response({"cloud": {"disabled": cloud["disabled"],
                                        "source": str(cloud.get("source", "upstream"))}})
    return json_response({"cloud": {"disabled": True, "source": "mlx-bridge"}})


@bp.route("/api/tags", methods=["GET", "HEAD"])
def tags() -> Response:
    local = sorted(served_locally(), key=lambda m: m.description.modified_at, reverse=True)
    entries = [tag_entry(m) for m in local]
    entries += upstream_models("/api/tags", {ModelName.parse(m.entry.name).key for m in local})
    entries.sort(key=lambda e: str(e.get("modified_at", "")), reverse=True)
    return json_response({"models": entries})


@bp.get("/api/ps")
def ps() -> Response:
    backend = bridge().local
    by_key: dict[tuple[str, str], LocalModel] = {}
    for m in backend.present():
        by_key.setdefault((m.key, ""), m)
        by_key[(m.key, m.entry.name)] = m
    rows = []
    for info in backend.engine.snapshot():
        model = (by_key.get((info.key, info.name))
                 # loaded under an admin row's name from its own mlx_model (which a mapped
                 # name may share: listed under the name it was loaded as)
                 or _loaded_elsewhere(backend, info.name, info.key)
                 or by_key.get((info.key, "")))
        if model is None:
            continue
        rows.append((info.expires_at, {
            "name": model.entry.name, "model": model.entry.name, "size": info.size,
            "size_vram": info.size_vram,
            "digest": model.description.digest, "details": model.description.details,
            "expires_at": rfc3339(info.expires_at), "context_length": info.context_length,
        }))
    rows.sort(key=lambda r: r[0], reverse=True)
    entries = [r[1] for r in rows]
    entries += upstream_models("/api/ps", {ModelName.parse(e["name"]).key for e in entries})
    entries.sort(key=lambda e: str(e.get("expires_at", "")), reverse=True)
    return json_response({"models": entries})


def _loaded_elsewhere(backend: Any, name: str, path: str) -> LocalModel | None:
    """A resident model no mapping entry names (an admin row's `mlx_model`), described from
    its directory; None if it cannot be."""
    try:
        return backend.find(name, source=path)
    except (BridgeError, InvalidModelName, OSError):
        return None


def requested_name(body: dict[str, Any], struct: str) -> str:
    """`model`, falling back to the deprecated `name` (the ollama CLI and Continue send it)."""
    f = Fields(body, struct)
    return f.str("model") or f.str("name")


@bp.post("/api/show")
def show() -> Response:
    raw = request.get_data()
    body = parse_body(raw, "ShowRequest")
    name = requested_name(body, "ShowRequest")
    if not name:
        raise BadRequest("model is required")
    try:
        display = ModelName.parse(name).display
    except InvalidModelName:
        raise BadRequest("invalid model name") from None
    verbose = bool(Fields(body, "ShowRequest").bool("verbose"))
    try:
        return dispatch(name, "/api/show", raw,
                        lambda model, plan: json_response(show_body(model, verbose)))
    except ModelNotFound:
        raise ModelNotFound(display) from None  # Ollama names the model in its full form here


def show_body(model: LocalModel, verbose: bool) -> dict[str, Any]:
    d = model.description
    info = d.model_info if verbose else {
        k: ([] if isinstance(v, list) and len(v) > 5 else v) for k, v in d.model_info.items()
    }
    body = {
        "modelfile": modelfile(model),
        "parameters": d.parameters,
        "template": d.template,
        **({"system": d.system} if d.system else {}),
        "details": d.details,
        "model_info": info,
        "capabilities": d.capabilities,
        "modified_at": rfc3339(d.modified_at),
    }
    if verbose:
        body["tensors"] = d.tensors
    return body


def modelfile(model: LocalModel) -> str:
    d = model.description
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {model.entry.name}",
        "",
        f"FROM {model.path}",
    ]
    if d.template:
        lines.append(f'TEMPLATE """{d.template}"""')
    if d.system:
        lines.append(f'SYSTEM """{d.system}"""')
    for line in d.parameters.splitlines():
        lines.append(f"PARAMETER {' '.join(line.split(None, 1))}")
    return "\n".join(lines) + "\n"


@bp.delete("/api/delete")
def delete() -> Response:
    raw = request.get_data()
    body = parse_body(raw, "DeleteRequest")
    name = requested_name(body, "DeleteRequest")
    try:
        ModelName.parse(name)
    except InvalidModelName:
        raise BadRequest(f'name "{name}" is invalid') from None

    def delete_local(model: LocalModel, plan: Any) -> Response:
        bridge().local.delete(model)
        return Response(status=200)

    try:
        return dispatch(name, "/api/delete", raw, delete_local, method="DELETE")
    except ModelNotFound:
        raise ModelNotFound(name) from None


@bp.get("/health")
@bp.get("/api/health")  # the hybrid gateway's name for it (scripts written against it)
def health() -> Response:
    state = bridge()
    engine = state.local.engine
    loaded = [{"model": i.name, "size": i.size, "expires_at": rfc3339(i.expires_at),
               "active": i.active} for i in engine.snapshot()]
    url = state.upstream_url
    problem = state.upstream.probe(url) if url else None
    health = engine.health()
    if health["last_crash"]:  # what happened: the error, and when (restarting or failed for good)
        health["last_crash"]["at"] = rfc3339(health["last_crash"]["at"])
    return json_response({
        "status": "ok" if engine.alive else "degraded",
        "version": __version__,
        "engine": health,
        "loaded_models": loaded,
        "backends": {
            "mlx": {"available": engine.alive, "device": engine.device},
            "ollama": {"upstream": redact_url(url), "reachable": bool(url) and problem is None,
                       "error": upstream_problem(url, problem),
                       "endpoints": state.router.breaker.snapshot()},
            "remote": endpoint_health(),  # every endpoint a model is routed to, probed
        },
    })


def upstream_problem(url: str | None, problem: str | None) -> str | None:
    """Why the default upstream does not answer, and what clients see meanwhile."""
    if not url or problem is None:
        return None
    if problem == "connection refused":
        return (f"upstream Ollama at {redact_url(url)} is not running (connection refused): models "
                "the bridge does not serve answer 404 not found")
    return f"upstream Ollama at {redact_url(url)} is not reachable: {problem}"
