"""Blueprint: POST /api/pull for names mapped to MLX (Hugging Face repos), streamed like Ollama."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from bridge.errors import BadRequest, BridgeError
from bridge.http.web import context, json_response, ndjson_stream
from bridge.importer.hub import PullError
from bridge.routing.dispatch import dispatch
from bridge.routing.registry import IMPORTED_DIR, MappedModel
from bridge.state import bridge
from bridge.wire.jsonbody import Fields, parse_body
from bridge.wire.names import InvalidModelName, ModelName
from bridge.wire.native_out import errors_as_last_line

bp = Blueprint("pull", __name__)


@bp.post("/api/pull")
def pull() -> Response:
    raw = request.get_data()
    body = parse_body(raw, "PullRequest")
    f = Fields(body, "PullRequest")
    name = f.str("model") or f.str("name")  # the Go CLI sends model:"" plus the deprecated name
    try:
        display = ModelName.parse(name).display
    except InvalidModelName:
        raise BadRequest("invalid model name") from None
    stream = f.bool("stream")
    ctx, state = context(), bridge()
    ctx.model, ctx.backend = display, "mlx"
    registry = state.registry
    entry = registry.lookup(display)
    if entry is None or not any(t.local for t in state.router.plan(display).targets):
        return dispatch(name, "/api/pull", raw, None)  # not ours: its remote pulls it (or says no)
    lines = _lines(entry, registry.local_dir(entry) is not None)
    if stream is False:
        return _last(lines)
    return ndjson_stream(errors_as_last_line(lines))


def _lines(entry: MappedModel, present: bool) -> Iterator[dict[str, Any]]:
    """What to stream: a download for hub repos; nothing to fetch for local or imported models."""
    imported = entry.source.split("/", 1)[0].lower() == IMPORTED_DIR  # an alias of an import
    if entry.is_local_dir or entry.origin == "local" or imported:
        if not present:
            raise PullError(f"pull model manifest: '{entry.name}' is served from local files "
                            f"({entry.source}) that are missing; import it again")
        return iter([{"status": "pulling manifest"}, {"status": "success"}])
    return bridge().puller.pull(entry.source)  # one Puller: it holds the per-repo locks


def _last(lines: Iterator[dict[str, Any]]) -> Response:
    """stream:false: only the final object; a failure is a 500 with the error (Ollama's status)."""
    last: dict[str, Any] = {}
    try:
        for line in lines:
            last = line
    except BridgeError as exc:
        return json_response({"error": exc.message}, 500)
    return json_response(last)
