"""Blueprint: liveness, version, and the model listings (/api/tags, /api/ps, /api/show, /api/delete)."""

from __future__ import annotations

import sys
from typing import Any

from flask import Blueprint, Response, current_app, request

from bridge import __version__
from bridge.errors import BadRequest, ModelNotFound
from bridge.http.web import json_response, rfc3339
from bridge.routing.dispatch import dispatch
from bridge.routing.upstream import redact_url
from bridge.serving.local import LocalBackend, LocalModel
from bridge.wire.jsonbody import Fields, parse_body
from bridge.wire.names import InvalidModelName, ModelName

bp = Blueprint("models", __name__)

OLLAMA_VERSION = "0.33.0"  # the protocol level we speak; clients gate features on it


def local_backend() -> LocalBackend:
    return current_app.extensions["bridge"].local


@bp.route("/", methods=["GET", "HEAD"])
def root() -> Response:
    return Response("Ollama is running", content_type="text/plain; charset=utf-8")


@bp.route("/api/version", methods=["GET", "HEAD"])
def version() -> Response:
    return json_response({"version": OLLAMA_VERSION})


def served_locally() -> list[LocalModel]:
    """Present models whose policy lets MLX serve them (an `ollama` policy hides them)."""
    router = current_app.extensions["bridge"].router
    return [m for m in local_backend().present() if router.plan(m.entry.name).policy != "ollama"]


def upstream_models(path: str, exclude: set[str]) -> list[dict[str, Any]]:
    """The upstream's listing minus names MLX serves (each name appears once); [] when down."""
    bridge = current_app.extensions["bridge"]
    url = bridge.upstream_url
    data = bridge.upstream.get_json(url, path) if url else None
    models = data.get("models") if data else None
    if not isinstance(models, list):
        return []
    return [m for m in models if isinstance(m, dict) and _key(m) not in exclude]


def _key(entry: dict[str, Any]) -> str:
    parsed = ModelName.try_parse(str(entry.get("model") or entry.get("name") or ""))
    return parsed.key if parsed else ""


@bp.route("/api/tags", methods=["GET", "HEAD"])
def tags() -> Response:
    local = sorted(served_locally(), key=lambda m: m.description.modified_at, reverse=True)
    entries = [tag_entry(m) for m in local]
    entries += upstream_models("/api/tags", {ModelName.parse(m.entry.name).key for m in local})
    entries.sort(key=lambda e: str(e.get("modified_at", "")), reverse=True)
    return json_response({"models": entries})


def tag_entry(m: LocalModel) -> dict[str, Any]:
    d = m.description
    return {"name": m.entry.name, "model": m.entry.name, "modified_at": rfc3339(d.modified_at),
            "size": d.size, "digest": d.digest, "details": d.details,
            "capabilities": d.capabilities}


@bp.get("/api/ps")
def ps() -> Response:
    backend = local_backend()
    by_key: dict[tuple[str, str], LocalModel] = {}
    for m in backend.present():
        by_key.setdefault((m.key, ""), m)
        by_key[(m.key, m.entry.name)] = m
    rows = []
    for info in backend.engine.snapshot():
        model = by_key.get((info.key, info.name)) or by_key.get((info.key, ""))
        if model is None:
            continue
        rows.append((info.expires_at, {
            "name": model.entry.name, "model": model.entry.name, "size": info.size,
            "size_vram": info.size if sys.platform == "darwin" else 0,
            "digest": model.description.digest, "details": model.description.details,
            "expires_at": rfc3339(info.expires_at), "context_length": info.context_length,
        }))
    rows.sort(key=lambda r: r[0], reverse=True)
    entries = [r[1] for r in rows]
    entries += upstream_models("/api/ps", {ModelName.parse(e["name"]).key for e in entries})
    entries.sort(key=lambda e: str(e.get("expires_at", "")), reverse=True)
    return json_response({"models": entries})


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
        return dispatch(name, "/api/show", raw, lambda model, plan: json_response(show_body(model, verbose)))
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
        local_backend().delete(model)
        return Response(status=200)

    try:
        return dispatch(name, "/api/delete", raw, delete_local, method="DELETE")
    except ModelNotFound:
        raise ModelNotFound(name) from None


@bp.get("/health")
def health() -> Response:
    bridge = current_app.extensions["bridge"]
    engine = bridge.local.engine
    loaded = [{"model": i.name, "size": i.size, "expires_at": rfc3339(i.expires_at), "active": i.active}
              for i in engine.snapshot()]
    url = bridge.upstream_url
    problem = bridge.upstream.probe(url) if url else None
    state = engine.health()
    if state["last_crash"]:  # what happened: the error, and when (restarting or failed for good)
        state["last_crash"]["at"] = rfc3339(state["last_crash"]["at"])
    return json_response({
        "status": "ok" if engine.alive else "degraded",
        "version": __version__,
        "engine": state,
        "loaded_models": loaded,
        "backends": {
            "mlx": {"available": engine.alive, "device": engine.device},
            "ollama": {"upstream": redact_url(url), "reachable": bool(url) and problem is None,
                       "error": upstream_problem(url, problem),
                       "endpoints": bridge.router.breaker.snapshot()},
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
