"""Blueprint: Ollama's /api/generate and /api/chat served by the local MLX backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from .dispatch import dispatch, record
from .engine import Chunk, Done, Job, PromptSpec
from .errors import BadRequest, BridgeError, Unsupported
from .jsonbody import parse_body
from .local import JobStream, LocalBackend, LocalModel
from .router import Plan
from .schemas import Common, GenerateRequest, parse_chat, parse_generate
from .web import json_response, ndjson_stream, rfc3339

bp = Blueprint("api", __name__)


def local_backend() -> LocalBackend:
    return current_app.extensions["bridge"].local


@bp.post("/api/generate")
def generate() -> Response:
    started = time.perf_counter_ns()
    raw = request.get_data()
    req = parse_generate(parse_body(raw, "GenerateRequest"))

    def local(model: LocalModel, plan: Plan) -> Response:
        if not (req.prompt or req.system or req.template or req.context or req.images):
            return load_or_unload(req, model, plan, {"response": ""})
        if req.images:
            raise Unsupported(f'"{req.model}" does not support images')
        check_capabilities(req, model)
        spec = PromptSpec(prompt=req.prompt, system=req.system, template=req.template, suffix=req.suffix,
                          raw=req.raw, context=req.context, think=req.think, truncate=req.truncate)
        return run(req, model, plan, spec, started, GenerateShape(req))

    return dispatch(req.model, "/api/generate", raw, local)


@bp.post("/api/chat")
def chat() -> Response:
    started = time.perf_counter_ns()
    raw = request.get_data()
    req = parse_chat(parse_body(raw, "ChatRequest"))
    if not req.model:
        raise BadRequest("model is required")

    def local(model: LocalModel, plan: Plan) -> Response:
        if not req.messages:
            return load_or_unload(req, model, plan, {"message": {"role": "assistant", "content": ""}})
        if any(m.images for m in req.messages):
            raise Unsupported(f'"{req.model}" does not support images')
        check_capabilities(req, model)
        spec = PromptSpec(messages=[m.to_template() for m in req.messages], tools=req.tools or None,
                          think=req.think, truncate=req.truncate)
        return run(req, model, plan, spec, started, ChatShape(req))

    return dispatch(req.model, "/api/chat", raw, local)


def check_capabilities(req: Common, model: LocalModel) -> None:
    caps = model.description.capabilities
    if req.think and "thinking" not in caps:
        raise Unsupported(f'"{req.model}" does not support thinking')
    if getattr(req, "tools", None) and "tools" not in caps:
        raise Unsupported(f"{model.entry.name} does not support tools")


def make_job(req: Common, model: LocalModel, plan: Plan, spec: PromptSpec | None) -> Job:
    keep_alive = req.keep_alive if req.keep_alive is not None else model.entry.keep_alive
    # Request options win over an admin row's defaults, which win over the mapping file's.
    options = req.options.merged(plan.defaults).merged(model.entry.options)
    return Job(model.key, model.entry.name, spec=spec, options=options, keep_alive=keep_alive,
               request_id=g.request_id)


def load_or_unload(req: Common, model: LocalModel, plan: Plan, body: dict[str, Any]) -> Response:
    """Empty prompt/messages: load the model, or unload it with keep_alive 0 (one object)."""
    done = None
    for event in local_backend().run(make_job(req, model, plan, None)):
        if isinstance(event, Done):
            done = event
    assert done is not None
    return json_response({"model": req.model, "created_at": rfc3339(), **body, "done": True,
                          "done_reason": done.done_reason})


def run(req: Common, model: LocalModel, plan: Plan, spec: PromptSpec, started: int,
        shape: Shape) -> Response:
    """Submit the job; errors before the first event become an HTTP status, later ones a line."""
    stream = local_backend().run(make_job(req, model, plan, spec))
    events = iter(stream)
    try:
        first = next(events)  # raises here (-> status code) if the job fails before any output
    except BaseException:
        stream.close()
        raise
    outcome = Outcome(current_app.extensions["bridge"], req.model, started)
    if not req.stream:
        return json_response(collect(first, events, stream, shape, outcome))
    return ndjson_stream(stream_lines(first, events, stream, shape, outcome))


class Outcome:
    """Records a local request's result for performance tracking once it ends."""

    def __init__(self, bridge: Any, model: str, started: int) -> None:
        self.bridge, self.model, self.started = bridge, model, started
        self.first_ns = time.perf_counter_ns()

    def finish(self, done: Done | None, error: str | None) -> None:
        eval_s = done.eval_duration / 1e9 if done and done.eval_duration else 0
        record(self.bridge, self.model, "mlx", None, ok=done is not None, error=error,
               prompt_tokens=done.prompt_eval_count if done else 0,
               eval_tokens=done.eval_count if done else 0,
               ttft_ms=(self.first_ns - self.started) / 1e6,
               latency_ms=(time.perf_counter_ns() - self.started) / 1e6,
               tokens_per_sec=done.eval_count / eval_s if done and eval_s else None,
               cached_tokens=done.cached_tokens if done else 0)


def stream_lines(first: Chunk | Done, events: Iterator[Chunk | Done], stream: JobStream,
                 shape: Shape, outcome: Outcome) -> Iterator[dict[str, Any]]:
    done, error = None, "client disconnected"
    try:
        event: Chunk | Done = first
        while True:
            if isinstance(event, Done):
                done, error = event, None
                yield shape.final(event, outcome.started)
                return
            if event.text:
                yield shape.chunk(event.text)
            event = next(events)
    except BridgeError as exc:
        error = exc.message
        yield {"error": exc.message}
    finally:
        stream.close()  # a client that went away cancels its generation
        outcome.finish(done, error)


def collect(first: Chunk | Done, events: Iterator[Chunk | Done], stream: JobStream,
            shape: Shape, outcome: Outcome) -> dict[str, Any]:
    parts: list[str] = []
    done, error = None, "request failed"
    try:
        event: Chunk | Done = first
        while not isinstance(event, Done):
            parts.append(event.text)
            event = next(events)
        done, error = event, None
    except BridgeError as exc:
        error = exc.message
        raise
    finally:
        stream.close()
        outcome.finish(done, error)
    return shape.final(event, outcome.started, "".join(parts))


class Shape:
    """How one endpoint lays out its chunks and final object."""

    def __init__(self, req: Common) -> None:
        self.req = req

    def base(self) -> dict[str, Any]:
        return {"model": self.req.model, "created_at": rfc3339()}

    def metrics(self, done: Done, started: int) -> dict[str, Any]:
        values = {
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": done.load_duration,
            "prompt_eval_count": done.prompt_eval_count,
            "prompt_eval_duration": done.prompt_eval_duration,
            "eval_count": done.eval_count,
            "eval_duration": done.eval_duration,
        }
        return {k: v for k, v in values.items() if v}  # Ollama's omitempty

    def chunk(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def final(self, done: Done, started: int, text: str = "") -> dict[str, Any]:
        raise NotImplementedError


class GenerateShape(Shape):
    req: GenerateRequest

    def chunk(self, text: str) -> dict[str, Any]:
        return {**self.base(), "response": text, "done": False}

    def final(self, done: Done, started: int, text: str = "") -> dict[str, Any]:
        out = {**self.base(), "response": text, "done": True, "done_reason": done.done_reason}
        if not self.req.raw:
            out["context"] = done.context
        return {**out, **self.metrics(done, started)}


class ChatShape(Shape):
    def chunk(self, text: str) -> dict[str, Any]:
        return {**self.base(), "message": {"role": "assistant", "content": text}, "done": False}

    def final(self, done: Done, started: int, text: str = "") -> dict[str, Any]:
        return {**self.base(), "message": {"role": "assistant", "content": text}, "done": True,
                "done_reason": done.done_reason, **self.metrics(done, started)}
