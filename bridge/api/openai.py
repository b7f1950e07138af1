"""Blueprint: Ollama's OpenAI-compatible /v1 endpoints, as conversions around the native core.

A /v1 request is translated into the native request and handed to the same dispatch and local
handlers as /api/chat and /api/generate; the native objects they produce are converted back.
Models the upstream serves get the original /v1 body, forwarded unchanged.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from bridge.errors import BadRequest, BridgeError, ModelNotFound
from bridge.http.limits import active
from bridge.http.web import json_response, sse_response
from bridge.routing.dispatch import LocalHandler, dispatch
from bridge.routing.router import Plan
from bridge.serving.catalog import served_locally, tag_entry, upstream_models
from bridge.serving.embeddings import openai_body, parse_openai
from bridge.serving.generation import Generation, chat_handler, generate_handler
from bridge.serving.local import LocalModel
from bridge.wire.jsonbody import parse_body
from bridge.wire.names import ModelName
from bridge.wire.openai_in import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    chat_layer,
    completion_to_native,
    embeddings_check,
    include_usage,
    many_choices,
    unsupported_field,
)
from bridge.wire.openai_out import ChatWriter, CompletionWriter, model_object
from bridge.wire.schemas import parse_chat, parse_generate

bp = Blueprint("openai", __name__)

class OpenAIResponder:
    """Renders a local generation through a ChatWriter/CompletionWriter: SSE or one object."""

    def __init__(self, writer: ChatWriter | CompletionWriter, stream: bool) -> None:
        self.writer, self.stream = writer, stream

    def result(self, generation: Generation) -> Response:
        if self.stream:
            return generation.streamed(sse_response(self.writer.events(generation.lines())))
        return json_response(self.writer.completion(generation.merged()))

    def loaded(self, body: dict[str, Any]) -> Response:
        if self.stream:
            return sse_response(self.writer.events([body]))
        return json_response(self.writer.completion(body))


def require_model(name: str) -> str:
    if not name:
        raise BadRequest("model is required")
    return name


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    raw = request.get_data()
    body = parse_body(raw, "ChatCompletionRequest")
    layer = chat_layer(body)
    refusal = many_choices(body) or layer.refusal or unsupported_field(body, CHAT_FIELDS)
    req = parse_chat(layer.native, active())
    req.forced_tools = layer.forced
    wants = req.logprobs or req.top_logprobs > 0
    writer = ChatWriter(req.model, include_usage(body), wants, layer.max_calls)
    responder = OpenAIResponder(writer, req.stream)
    return dispatch(require_model(req.model), request.path, raw,
                    refused_here(refusal, chat_handler(req, responder)))


@bp.post("/v1/completions")
def completions() -> Response:
    raw = request.get_data()
    body = parse_body(raw, "CompletionRequest")
    req = parse_generate(completion_to_native(body), active())
    top = req.top_logprobs if req.logprobs else None
    responder = OpenAIResponder(CompletionWriter(req.model, include_usage(body), top),
                                req.stream)
    return dispatch(require_model(req.model), request.path, raw,
                    refused_here(many_choices(body)
                                 or unsupported_field(body, COMPLETION_FIELDS),
                                 generate_handler(req, responder)))


def refused_here(error: BridgeError | None, local: LocalHandler) -> LocalHandler:
    """`local`, or, when the request asks what only a remote engine may do (`n` > 1, a
    tool_choice this layer cannot carry out), a handler answering the bridge's own models with
    `error`; a remote target still gets the body as sent."""
    if error is None:
        return local

    def refuse(model: LocalModel, plan: Plan) -> Response:
        raise error

    return refuse


@bp.post("/v1/embeddings")
def embeddings() -> Response:
    """Embeddings in OpenAI's shape; MLX models answer from their pooled hidden states."""
    raw = request.get_data()
    body = parse_body(raw, "EmbedRequest")
    name = require_model(embeddings_check(body))
    req = parse_openai(body)

    def local(model: LocalModel, plan: Plan) -> Response:
        encoding = str(body.get("encoding_format") or "float")
        return json_response(openai_body(req, model, plan, encoding))

    return dispatch(name, request.path, raw, local)


def listing() -> list[dict[str, Any]]:
    """The models /api/tags lists: MLX-served ones, then the upstream's other ones."""
    local = served_locally()
    entries = [tag_entry(m) for m in local]
    served = {ModelName.parse(m.entry.name).key for m in local}
    return entries + upstream_models("/api/tags", served)


@bp.get("/v1/models")
def models() -> Response:
    return json_response({"object": "list", "data": [model_object(e) for e in listing()]})


@bp.get("/v1/models/<path:name>")
def model(name: str) -> Response:
    wanted = ModelName.try_parse(name)
    if wanted is None:
        raise ModelNotFound(name)
    for entry in listing():
        listed = ModelName.try_parse(str(entry.get("model") or entry.get("name") or ""))
        if listed and listed.key == wanted.key:
            return json_response(model_object(entry))
    raise ModelNotFound(name)
