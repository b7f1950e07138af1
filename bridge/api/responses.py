"""Blueprint: OpenAI's Responses API (`/v1/responses`), as conversions around the native core.

Stateless, as in Ollama: nothing is stored, there is no GET/DELETE of a response. For MLX models
the body becomes a native chat request (bridge.wire.responses_in) run by the same local handler
as /api/chat; its native objects are rendered by bridge.wire.responses_out. Models the upstream
serves get the original body, forwarded unchanged. Errors take OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from bridge.http.limits import active, zstd_aware_body
from bridge.http.web import json_response, sse_response
from bridge.routing.dispatch import dispatch
from bridge.routing.router import Plan
from bridge.serving.generation import Generation, chat_handler
from bridge.serving.local import LocalModel
from bridge.wire.jsonbody import parse_body
from bridge.wire.responses_in import STRUCT, responses_check, responses_to_native
from bridge.wire.responses_out import ResponsesWriter
from bridge.wire.schemas import parse_chat

bp = Blueprint("responses", __name__)


class ResponsesResponder:
    """Renders a local generation as one response object or the Responses event stream."""

    def __init__(self, writer: ResponsesWriter, stream: bool) -> None:
        self.writer, self.stream = writer, stream

    def result(self, generation: Generation) -> Response:
        if self.stream:
            return generation.streamed(sse_response(self.writer.events(generation.lines())))
        return json_response(self.writer.response(generation.merged()))

    def loaded(self, body: dict[str, Any]) -> Response:
        if self.stream:
            return sse_response(self.writer.events([body]))
        return json_response(self.writer.response(body))


@bp.post("/v1/responses")
def responses() -> Response:
    raw = zstd_aware_body()  # forwarded decompressed: the upstream gets plain JSON
    body = parse_body(raw, STRUCT)
    name = responses_check(body)

    def local(model: LocalModel, plan: Plan) -> Response:
        # Converted only for MLX: an upstream model gets Ollama's own reading of the body.
        layer = responses_to_native(body)
        req = parse_chat(layer.native, active())
        req.forced_tools = layer.forced
        writer = ResponsesWriter(req.model, layer.echo, layer.max_calls, layer.encrypted_reasoning,
                                 layer.logprobs)
        return chat_handler(req, ResponsesResponder(writer, req.stream))(model, plan)

    return dispatch(name, request.path, raw, local)
