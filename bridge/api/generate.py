"""Blueprint: Ollama's /api/generate and /api/chat (parse -> dispatch -> native shape).

The MLX side is bridge/serving/generation.py; an upstream target gets the body as it came.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from bridge.errors import BadRequest
from bridge.http.limits import active
from bridge.http.web import json_response, ndjson_stream
from bridge.routing.dispatch import dispatch
from bridge.serving.generation import Generation, chat_handler, generate_handler
from bridge.wire.jsonbody import parse_body
from bridge.wire.schemas import parse_chat, parse_generate

bp = Blueprint("api", __name__)


@bp.post("/api/generate")
def generate() -> Response:
    raw = request.get_data()
    req = parse_generate(parse_body(raw, "GenerateRequest"), active())
    return dispatch(req.model, "/api/generate", raw,
                    generate_handler(req, NativeResponder(req.stream)))


@bp.post("/api/chat")
def chat() -> Response:
    raw = request.get_data()
    req = parse_chat(parse_body(raw, "ChatRequest"), active())
    if not req.model:
        raise BadRequest("model is required")
    return dispatch(req.model, "/api/chat", raw, chat_handler(req, NativeResponder(req.stream)))


class NativeResponder:
    """Ollama's NDJSON stream or one JSON object."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def result(self, generation: Generation) -> Response:
        if self.stream:
            return generation.streamed(ndjson_stream(generation.lines()))
        return json_response(generation.merged())

    def loaded(self, body: dict[str, Any]) -> Response:
        return json_response(body)
