"""What a model request is told when no target serves it: an invalid name, a model the bridge
serves itself but cannot run that operation on, or an unknown model in Ollama's words."""

from __future__ import annotations

import logging

from bridge.errors import BadRequest, BridgeError, ModelNotFound, UpstreamNotRunning
from bridge.http.web import context
from bridge.routing.router import Target
from bridge.routing.upstream import UpstreamUnavailable, redact_url
from bridge.wire.names import InvalidModelName, ModelName

log = logging.getLogger(__name__)

# Ollama's words for an unknown model where they differ from `model 'x' not found` (reference §5).
_PULL_FIRST = 'model "{name}" not found, try pulling it first'
NOT_FOUND_TEXT = {
    "/api/show": "model '{display}' not found",
    "/api/embed": _PULL_FIRST,
    "/api/embeddings": _PULL_FIRST,
    "/v1/embeddings": _PULL_FIRST,
    "/api/copy": 'model "{name}" not found',
    "/api/pull": "pull model manifest: file does not exist",
}


def local_only(name: str, path: str) -> BadRequest:
    """A registry or Modelfile operation (/api/copy, /api/push, /api/create) on a model the
    bridge serves itself: a 400 saying so, not a 404 for a model /api/tags lists."""
    return BadRequest(f"{path} is not supported for model '{name}': mlx-bridge serves it on MLX "
                      "from its own files (Modelfile and registry operations belong to Ollama, "
                      "which does not have it)")


def check_model_name(name: str) -> None:
    """400 `invalid model name` for what Ollama's name rules reject; the empty name is Ollama's
    404."""
    if not name:
        raise ModelNotFound(name)
    try:
        ModelName.parse(name)
    except InvalidModelName:
        raise BadRequest("invalid model name") from None


def unserved(name: str, path: str, last: Target, failed: list[BridgeError]) -> BridgeError:
    """The error for a request no target could serve: the last target's, or a 404.

    When the last target is an upstream that refuses connections (no Ollama running there) and
    nothing before it had the model, the name is unknown: the endpoint's 404 in Ollama's words,
    saying why, instead of a 502.
    """
    error = failed[-1]
    if not _refused(error) or not all(isinstance(e, ModelNotFound) or _refused(e) for e in failed):
        return error
    shown = redact_url(last.endpoint)
    log.warning("model not found request_id=%s model=%s reason=upstream_not_running endpoint=%s",
                context().request_id, name, shown)
    return UpstreamNotRunning(not_found_text(name, path)
                              + f"; the {last.who} at {shown} is not running (connection refused)")


def not_found_text(name: str, path: str) -> str:
    """An unknown model's 404 text in Ollama's words for the endpoint (reference §5), whether no
    upstream is configured or the configured one is not running."""
    template = NOT_FOUND_TEXT.get(path, "model '{name}' not found")
    return template.format(name=name, display=ModelName.parse(name).display)


def _refused(exc: BridgeError) -> bool:
    return isinstance(exc, UpstreamUnavailable) and exc.refused
