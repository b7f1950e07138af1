"""The model listings' parts shared by /api/tags, /api/ps and /v1/models: what MLX serves here
and what the default upstream lists besides."""

from __future__ import annotations

from typing import Any

from bridge.http.web import rfc3339
from bridge.routing.router import Plan
from bridge.routing.upstream import redact_url
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.names import ModelName


def served_locally() -> list[LocalModel]:
    """Present models whose policy lets MLX serve them (an `ollama` policy hides them)."""
    state = bridge()
    return [m for m in state.local.present()
            if state.router.plan(m.entry.name).policy != "ollama"]


def upstream_models(path: str, exclude: set[str]) -> list[dict[str, Any]]:
    """The upstream's listing minus names MLX serves (each name appears once); [] when down."""
    state = bridge()
    url = state.upstream_url
    data = state.upstream.get_json(url, path) if url else None
    models = data.get("models") if data else None
    if not isinstance(models, list):
        return []
    return [m for m in models if isinstance(m, dict) and _key(m) not in exclude]


def _key(entry: dict[str, Any]) -> str:
    parsed = ModelName.try_parse(str(entry.get("model") or entry.get("name") or ""))
    return parsed.key if parsed else ""


def tag_entry(m: LocalModel) -> dict[str, Any]:
    d = m.description
    return {"name": m.entry.name, "model": m.entry.name, "modified_at": rfc3339(d.modified_at),
            "size": d.size, "digest": d.digest, "details": d.details,
            "capabilities": d.capabilities}


def plan_json(plan: Plan) -> dict[str, Any]:
    """A routing plan as shown to admins: the targets in the order they are tried now."""
    return {"policy": plan.policy, "defaults": plan.defaults, "targets": [
        {"backend": t.backend, "endpoint_url": redact_url(t.endpoint), "mlx_model": t.source,
         "timeout_seconds": t.timeout} for t in plan.targets]}
