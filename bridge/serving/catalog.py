"""The model listings' parts shared by /api/tags, /api/ps and /v1/models: what MLX serves here,
what the default upstream lists besides, and the models mapped to remote engines; the remote
endpoints' health for /health."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bridge.errors import BridgeError
from bridge.http.web import rfc3339
from bridge.routing.router import Plan, Target
from bridge.routing.upstream import Upstream, redact_url
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.names import ModelName

log = logging.getLogger(__name__)


def served_locally() -> list[LocalModel]:
    """Present models the local engine serves (an `ollama` policy, or MLX on a remote server,
    hides them)."""
    state = bridge()
    return [m for m in state.local.present()
            if any(t.local for t in state.router.plan(m.entry.name).targets)]


def upstream_models(path: str, exclude: set[str]) -> list[dict[str, Any]]:
    """The upstream's listing minus names MLX serves (each name appears once; none when it is
    down); for /api/tags also the models mapped to remote engines."""
    state = bridge()
    url = state.upstream_url
    data = state.upstream.get_json(url, path) if url else None
    models = data.get("models") if data else None
    listed = [m for m in models or [] if isinstance(m, dict) and _key(m) not in exclude]
    if not isinstance(models, list):
        listed = []
    if path != "/api/tags":
        return listed
    return listed + remote_models(exclude | {_key(m) for m in listed})


def remote_names() -> dict[str, str]:
    """{name key: name} of every model the mapping file or an enabled admin row sends to an
    endpoint of its own (not the default upstream, whose listing has its models)."""
    state = bridge()
    names = {ModelName.parse(e.name).key: e.name for e in state.registry.entries()
             if e.endpoint_url}
    try:
        rows = state.store.list_rows(enabled_only=True)
    except BridgeError as exc:  # a locked or corrupt database: the mapping file still lists
        log.warning("backend rows unavailable for the listing error=%s", exc.message)
        rows = []
    for row in rows:
        if row.endpoint_url and (parsed := ModelName.try_parse(row.model_name)):
            names.setdefault(parsed.key, parsed.display)
    return names


def remote_models(exclude: set[str]) -> list[dict[str, Any]]:
    """/api/tags entries for models served by a remote engine: their size is not known here (0);
    `remote_model` and `remote_host` say where they run, as Ollama's cloud models do."""
    out = []
    for key, name in remote_names().items():
        target = _first_remote(bridge().router.plan(name))
        if key in exclude or target is None:
            continue
        out.append({"name": name, "model": name, "modified_at": rfc3339(), "size": 0,
                    "digest": "", "details": {"parent_model": "", "format": "", "family": "",
                                              "families": None, "parameter_size": "",
                                              "quantization_level": ""},
                    "remote_model": target.remote_model or name,
                    "remote_host": redact_url(target.endpoint)})
    return out


def _first_remote(plan: Plan) -> Target | None:
    return next((t for t in plan.targets if not t.local), None)


def endpoint_health() -> list[dict[str, Any]]:
    """Each remote endpoint a model is routed to, probed the way its protocol allows (Ollama:
    /api/version, OpenAI: /v1/models), in parallel so /health stays fast; with its models and
    its circuit breaker's state."""
    state = bridge()
    endpoints: dict[tuple[str, str], dict[str, Any]] = {}
    for name in remote_names().values():
        for t in state.router.plan(name).targets:
            if t.endpoint:
                slot = endpoints.setdefault((t.endpoint, t.protocol),
                                            {"target": t, "models": []})
                slot["models"].append(name)
    if not endpoints:
        return []
    breakers = state.router.breaker.snapshot()
    upstream = state.upstream  # the pool's threads have no app context: bound here
    with ThreadPoolExecutor(max_workers=min(8, len(endpoints))) as pool:
        problems = list(pool.map(lambda slot: _probe(upstream, slot["target"]),
                                 endpoints.values()))
    return [{"endpoint_url": redact_url(url), "protocol": protocol,
             "backend": slot["target"].backend, "models": sorted(slot["models"]),
             "reachable": problem is None, "error": problem,
             "breaker": breakers.get(str(redact_url(url)), {"state": "closed", "failures": 0})}
            for ((url, protocol), slot), problem in zip(endpoints.items(), problems, strict=True)]


def _probe(upstream: Upstream, target: Target) -> str | None:
    assert target.endpoint is not None
    key = os.environ.get(target.api_key_env, "").strip() if target.api_key_env else None
    if target.api_key_env and not key:
        return f"its key variable ${target.api_key_env} is not set"
    return upstream.probe(target.endpoint, target.protocol, key or None)


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
         "timeout_seconds": t.timeout,
         **({"protocol": t.protocol, "remote_model": t.remote_model} if t.endpoint else {})}
        for t in plan.targets]}
