"""Blueprint: endpoints the bridge forwards to the upstream Ollama for models MLX does not serve."""

from __future__ import annotations

import json
import re
import time

from flask import Blueprint, Response, request

from bridge.errors import BadRequest, ModelNotFound
from bridge.http.web import json_response
from bridge.routing.dispatch import dispatch, forward
from bridge.routing.router import Plan, Target
from bridge.serving.embeddings import embed_body, legacy_body, parse_embed, parse_legacy
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.jsonbody import Fields, parse_body
from bridge.wire.names import InvalidModelName, ModelName

bp = Blueprint("proxy", __name__)

_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def default_target() -> Target:
    url = bridge().upstream_url
    if not url:
        raise ModelNotFound("", " (no upstream Ollama is configured)")
    return Target("ollama", endpoint=url)


def model_field(struct: str, *names: str) -> tuple[bytes, str]:
    raw = request.get_data()
    f = Fields(parse_body(raw, struct), struct)
    for name in names:
        value = f.str(name)
        if value:
            return raw, value
    raise BadRequest("model is required")


@bp.post("/api/embed")
@bp.post("/api/embeddings")
def embed() -> Response:
    """Embeddings: pooled hidden states for MLX models, the upstream's answer for the rest."""
    started = time.perf_counter_ns()
    legacy = request.path == "/api/embeddings"
    raw, name = model_field("EmbeddingRequest" if legacy else "EmbedRequest", "model")
    req = (parse_legacy if legacy else parse_embed)(parse_body(raw, "EmbedRequest"))

    def local(model: LocalModel, plan: Plan) -> Response:
        body = legacy_body(req, model, plan) if legacy else embed_body(req, model, plan, started)
        return json_response(body)

    return dispatch(name, request.path, raw, local)


@bp.post("/api/push")
@bp.post("/api/create")
def model_write() -> Response:
    """Registry and Modelfile operations belong to the real Ollama."""
    raw, name = model_field("CreateRequest", "model", "name")
    return dispatch(name, request.path, raw, None)


@bp.post("/api/copy")
def copy() -> Response:
    raw, name = model_field("CopyRequest", "source")
    destination = Fields(parse_body(raw, "CopyRequest"), "CopyRequest").str("destination")
    for field, value in (("source", name), ("destination", destination)):
        try:  # both names, before anything is forwarded (Ollama's texts)
            ModelName.parse(value)
        except InvalidModelName:
            raise BadRequest(f"{field} {json.dumps(value)} is invalid") from None
    return dispatch(name, "/api/copy", raw, None)


@bp.route("/api/blobs/<digest>", methods=["HEAD", "POST"])
def blobs(digest: str) -> Response:
    if not _DIGEST.fullmatch(digest):
        raise BadRequest("invalid digest format")
    body = request.stream if request.method == "POST" else None  # stream big uploads through
    return forward(default_target(), f"/api/blobs/{digest}", body, method=request.method)
