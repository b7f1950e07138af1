"""Blueprint: endpoints forwarded to the upstream Ollama, and the relay for unknown paths."""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import quote, urlsplit, urlunsplit

from flask import Blueprint, Response, request
from werkzeug.exceptions import NotFound

from bridge.errors import BadRequest, BridgeError, ModelNotFound, UpstreamNotRunning
from bridge.errors import NotFound as BridgeNotFound
from bridge.http.web import handle_bridge_error, handle_http_error, json_response, request_id
from bridge.routing.dispatch import dispatch, forward
from bridge.routing.refusals import local_only
from bridge.routing.router import Plan, Target
from bridge.routing.upstream import UpstreamUnavailable, redact_url
from bridge.serving.embeddings import embed_body, legacy_body, parse_embed, parse_legacy
from bridge.serving.local import LocalModel
from bridge.state import bridge
from bridge.wire.jsonbody import Fields, parse_body
from bridge.wire.names import InvalidModelName, ModelName

bp = Blueprint("proxy", __name__)
log = logging.getLogger(__name__)

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
    base = name
    if request.path == "/api/create":  # a Modelfile's base: what must exist
        base = Fields(parse_body(raw, "CreateRequest"), "CreateRequest").str("from")
    return forward_or_say_mlx(name, base, raw)


@bp.post("/api/copy")
def copy() -> Response:
    raw, name = model_field("CopyRequest", "source")
    destination = Fields(parse_body(raw, "CopyRequest"), "CopyRequest").str("destination")
    for field, value in (("source", name), ("destination", destination)):
        try:  # both names, before anything is forwarded (Ollama's texts)
            ModelName.parse(value)
        except InvalidModelName:
            raise BadRequest(f"{field} {json.dumps(value)} is invalid") from None
    return forward_or_say_mlx(name, name, raw)


def forward_or_say_mlx(name: str, base: str, raw: bytes) -> Response:
    """Forward a copy/push/create routed by `name`. When the model it starts from (`base`) is
    one only MLX serves here, the upstream (if any) answers `not found`, which misleads for a
    model /api/tags lists (Open WebUI shows that text as its toast): a 400 says why instead."""
    try:
        resp = dispatch(name, request.path, raw, None)
    except BridgeNotFound:  # no upstream, or none running: Ollama's 404 unless `base` is ours
        if _served_on_mlx(base):
            raise _not_on_mlx(base) from None
        raise
    if resp.status_code == 404 and _served_on_mlx(base):
        resp.close()
        raise _not_on_mlx(base)
    return resp


def _served_on_mlx(name: str) -> bool:
    try:
        return bool(name) and bridge().local.find(ModelName.parse(name).display) is not None
    except InvalidModelName:
        return False


def _not_on_mlx(name: str) -> BridgeError:
    return local_only(name, request.path)


@bp.route("/api/blobs/<digest>", methods=["HEAD", "POST"])
def blobs(digest: str) -> Response:
    if not _DIGEST.fullmatch(digest):
        raise BadRequest("invalid digest format")
    body = request.stream if request.method == "POST" else None  # stream big uploads through
    target = default_target()
    try:
        return forward(target, f"/api/blobs/{digest}", body, method=request.method)
    except UpstreamUnavailable as error:
        if not error.refused:
            raise
        # No Ollama listens there: no blob exists (HEAD's 404, as Ollama answers a missing one)
        # and none can be stored; a 404 saying so, not a 502 the clients would retry.
        why = f"the {target.who} at {redact_url(target.endpoint)} is not running"
        if request.method == "HEAD":
            raise UpstreamNotRunning(f"blob {digest} not found; {why}") from None
        raise UpstreamNotRunning(f"cannot store blob {digest}: blobs are kept by the upstream "
                                 f"Ollama and {why} (connection refused)") from None


@bp.app_errorhandler(NotFound)
def relay_unknown(exc: NotFound) -> Response:
    """A path the bridge does not serve goes to the default upstream unchanged (404 without one).

    Only a routing miss is relayed: a known path with a wrong method stays the bridge's 405, and
    a NotFound raised inside a view is answered as usual. A JSON body naming a valid `model` is
    routed by that model like /api/chat (plan, fallback, tracking); anything else is relayed as is.
    """
    if exc is not request.routing_exception or not bridge().upstream_url:
        return handle_http_error(exc)
    try:  # an error handler's own errors are not mapped by Flask: map them here
        return _relay(raw_target(), request.get_data())  # the body under the usual cap
    except UpstreamUnavailable as error:
        if not error.refused:
            return handle_bridge_error(error)
        # No Ollama listens there (a bridge used for MLX only): the path stays Ollama's 404.
        log.info("unknown path not relayed request_id=%s path=%s reason=%r",
                 request_id(), request.path, error.message)
        return handle_http_error(exc)
    except BridgeError as error:
        return handle_bridge_error(error)


def _relay(path: str, raw: bytes) -> Response:
    name = body_model(raw)
    if name is not None:
        mlx_only(name)
        return dispatch(name, path, raw, None, method=request.method)
    return forward(default_target(), path, raw or None, method=request.method)


def mlx_only(name: str) -> None:
    """A model only MLX serves has no upstream to take an endpoint the bridge lacks: say so."""
    plan = bridge().router.plan(name)
    if plan.targets and all(t.local for t in plan.targets):
        raise BridgeNotFound(f"{request.method} {request.path} is not served for model "
                             f"'{name}': it runs on MLX here, and endpoints the bridge does not "
                             "implement are relayed only to an upstream Ollama")


def raw_target() -> str:
    """The request target as the client sent it: percent-escapes and query string untouched."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw:
        parts = urlsplit(raw)  # an absolute-form target (`GET http://host/x`): keep path and query
        return urlunsplit(("", "", parts.path or "/", parts.query, "")) if parts.scheme else raw
    query = request.query_string.decode("latin-1")
    return quote(request.path) + (f"?{query}" if query else "")


def body_model(raw: bytes) -> str | None:
    """The `model` of a JSON object body when it is a valid Ollama name, else None."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        value = json.loads(raw).get("model")
        ModelName.parse(value)
    except (ValueError, RecursionError, InvalidModelName, TypeError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
