"""Blueprint: Anthropic's Messages API (`/v1/messages`), as conversions around the native core.

For MLX models the body becomes a native chat request (bridge.wire.anthropic_in) run by the same
local handler as /api/chat; its native objects are rendered by bridge.wire.anthropic_out.
Models the upstream serves get the original body, forwarded unchanged (Ollama serves
/v1/messages itself). `x-api-key`, `Authorization` and `anthropic-version` are accepted and not
checked, as in Ollama. Errors take Anthropic's shape (bridge.http.web.error_body).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from bridge.http.limits import active
from bridge.http.web import json_response, request_id, sse_response
from bridge.routing.dispatch import dispatch
from bridge.routing.router import Plan
from bridge.serving.generation import Generation, chat_handler, prompt_token_count
from bridge.serving.local import LocalModel
from bridge.wire.anthropic_in import (
    STRUCT,
    MessagesPlan,
    estimate_input_tokens,
    messages_check,
    messages_to_native,
)
from bridge.wire.anthropic_out import MessagesWriter, count_tokens_body
from bridge.wire.jsonbody import parse_body
from bridge.wire.schemas import ChatRequest, parse_chat

log = logging.getLogger(__name__)

bp = Blueprint("anthropic", __name__)


class AnthropicResponder:
    """Renders a local generation as one Message or Anthropic's SSE event stream."""

    def __init__(self, writer: MessagesWriter, stream: bool) -> None:
        self.writer, self.stream = writer, stream

    def result(self, generation: Generation) -> Response:
        if self.stream:
            return generation.streamed(
                sse_response(self.writer.events(with_stop_sequence(generation))))
        final = generation.merged()
        return json_response(self.writer.message(
            {**final, "stop_sequence": generation.stop_sequence}))

    def loaded(self, body: dict[str, Any]) -> Response:
        if self.stream:
            return sse_response(self.writer.events([body]))
        return json_response(self.writer.message(body))


def with_stop_sequence(generation: Generation) -> Iterator[dict[str, Any]]:
    """The native lines, the final one with the stop string the engine matched (if any)."""
    for line in generation.lines():
        yield {**line, "stop_sequence": generation.stop_sequence} if line.get("done") else line


def native_request(body: dict[str, Any],
                   counting: bool = False) -> tuple[ChatRequest, MessagesPlan]:
    plan = messages_to_native(body, counting)
    req = parse_chat(plan.native, active())
    req.forced_tools = plan.forced
    if plan.user_id:
        log.info("anthropic metadata request_id=%s user_id=%s", request_id(), plan.user_id)
    return req, plan


def relax_thinking(req: ChatRequest, model: LocalModel) -> None:
    """Thinking asked of a model without it is dropped, not a 400 (Ollama's `relax_thinking` for
    this layer): Claude Code and the SDKs send `thinking` whatever model they talk to."""
    if req.think and "thinking" not in model.description.capabilities:
        log.debug("thinking dropped request_id=%s model=%s (the model has none)", request_id(),
                  model.entry.name)
        req.think = None


@bp.post("/v1/messages")
def messages() -> Response:
    raw = request.get_data()
    body = parse_body(raw, STRUCT)
    name = messages_check(body)

    def local(model: LocalModel, plan: Plan) -> Response:
        # Converted only for MLX: an upstream model gets Ollama's own reading of the body.
        req, layer = native_request(body)
        relax_thinking(req, model)
        writer = MessagesWriter(req.model, estimate_input_tokens(layer.native), layer.show_thinking,
                                layer.max_calls, layer.context)
        return chat_handler(req, AnthropicResponder(writer, req.stream))(model, plan)

    return dispatch(name, request.path, raw, local)


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> Response:
    """The prompt's real token count through the model's chat template (no such Ollama route)."""
    raw = request.get_data()
    body = parse_body(raw, STRUCT)
    name = messages_check(body, counting=True)

    def local(model: LocalModel, plan: Plan) -> Response:
        req, _ = native_request(body, counting=True)
        relax_thinking(req, model)
        return json_response(count_tokens_body(prompt_token_count(req, model, plan)))

    return dispatch(name, request.path, raw, local)
