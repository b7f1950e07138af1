"""Blueprint: Ollama's /api/generate and /api/chat served by the local MLX backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from typing import Any, Protocol

from flask import Blueprint, Response, current_app, g, request

from bridge.engine import Chunk, Done, Job, PromptSpec
from bridge.engine.structured import TokenizerTables
from bridge.errors import BadRequest, BridgeError, Unsupported
from bridge.http.limits import active
from bridge.http.web import client_gone_probe, json_response, ndjson_stream, rfc3339
from bridge.routing.dispatch import LocalHandler, dispatch, record
from bridge.routing.router import Plan
from bridge.serving.local import JobStream, LocalBackend, LocalModel
from bridge.serving.output import Delta, OutputPlan, plan_output, tables_for
from bridge.wire.jsonbody import parse_body
from bridge.wire.native_out import errors_as_last_line
from bridge.wire.schemas import ChatRequest, Common, GenerateRequest, parse_chat, parse_generate

bp = Blueprint("api", __name__)


def local_backend() -> LocalBackend:
    return current_app.extensions["bridge"].local


@bp.post("/api/generate")
def generate() -> Response:
    started = time.perf_counter_ns()
    raw = request.get_data()
    req = parse_generate(parse_body(raw, "GenerateRequest"), active())
    return dispatch(req.model, "/api/generate", raw, generate_handler(req, started, NativeResponder(req.stream)))


def generate_handler(req: GenerateRequest, started: int, responder: Responder) -> LocalHandler:
    """The MLX side of a generate request (also behind /v1/completions)."""

    def local(model: LocalModel, plan: Plan) -> Response:
        if not (req.prompt or req.system or req.template or req.context or req.images):
            return responder.loaded(load_or_unload(req, model, plan, {"response": ""}))
        if req.images:
            raise Unsupported(f'"{req.model}" does not support images')
        check_capabilities(req, model)
        output = plan_output(req.think, model.description.capabilities, None, req.format)
        spec = PromptSpec(prompt=req.prompt, system=req.system, template=req.template, suffix=req.suffix,
                          raw=req.raw, context=req.context, think=req.think, truncate=req.truncate,
                          logits_processor_factory=output.factory(tables()))
        return run(req, model, plan, spec, started, GenerateShape(req), output, responder)

    return local


@bp.post("/api/chat")
def chat() -> Response:
    started = time.perf_counter_ns()
    raw = request.get_data()
    req = parse_chat(parse_body(raw, "ChatRequest"), active())
    if not req.model:
        raise BadRequest("model is required")
    return dispatch(req.model, "/api/chat", raw, chat_handler(req, started, NativeResponder(req.stream)))


def chat_handler(req: ChatRequest, started: int, responder: Responder) -> LocalHandler:
    """The MLX side of a chat request (also behind /v1/chat/completions)."""

    def local(model: LocalModel, plan: Plan) -> Response:
        if not req.messages:
            return responder.loaded(load_or_unload(req, model, plan, {"message": {"role": "assistant", "content": ""}}))
        check_chat(req, model)
        output = plan_output(req.think, model.description.capabilities, req.tools, req.format,
                             req.forced_tools)
        spec = PromptSpec(messages=[m.to_template() for m in req.messages], tools=req.tools or None,
                          think=req.think, truncate=req.truncate,
                          logits_processor_factory=output.factory(tables()))
        return run(req, model, plan, spec, started, ChatShape(req), output, responder)

    return local


def check_chat(req: ChatRequest, model: LocalModel) -> None:
    """What the MLX side cannot do with this chat: Unsupported (400, or the next target)."""
    if any(m.images for m in req.messages):
        raise Unsupported(f'"{req.model}" does not support images')
    check_capabilities(req, model)


# A context no prompt reaches: counting never truncates (the count is all it computes).
COUNT_CONTEXT = 1 << 40


def prompt_token_count(req: ChatRequest, model: LocalModel, plan: Plan) -> int:
    """The chat's prompt length in tokens through the model's chat template.

    Counted on the engine thread (which owns the tokenizer) by a job that generates nothing:
    with num_predict 0 the engine renders and tokenizes the prompt and answers Done at once.
    """
    check_chat(req, model)
    spec = PromptSpec(messages=[m.to_template() for m in req.messages], tools=req.tools or None,
                      think=req.think, truncate=False)
    job = make_job(req, model, plan, spec)
    job.options = replace(job.options, num_predict=0, num_ctx=COUNT_CONTEXT)
    count = 0
    for event in local_backend().run(job):
        if isinstance(event, Done):
            count = event.prompt_eval_count
    return count


def tables() -> TokenizerTables:
    return tables_for(current_app.extensions)


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


def load_or_unload(req: Common, model: LocalModel, plan: Plan, body: dict[str, Any]) -> dict[str, Any]:
    """Empty prompt/messages: load the model, or unload it with keep_alive 0 (one object)."""
    done = None
    for event in local_backend().run(make_job(req, model, plan, None)):
        if isinstance(event, Done):
            done = event
    assert done is not None
    return {"model": req.model, "created_at": rfc3339(), **body, "done": True,
            "done_reason": done.done_reason}


def run(req: Common, model: LocalModel, plan: Plan, spec: PromptSpec, started: int,
        shape: Shape, output: OutputPlan, responder: Responder) -> Response:
    """Submit the job; errors before the first event become an HTTP status, later ones a line."""
    backend, job = local_backend(), make_job(req, model, plan, spec)
    backend.tokenize(model, job)  # here, not on the engine thread: a huge prompt stalls no one
    stream = backend.run(job, client_gone_probe())  # a hang-up cancels the job, streamed or not
    events = iter(stream)
    try:
        first = next(events)  # raises here (-> status code) if the job fails before any output
    except BaseException:
        stream.close()
        raise
    outcome = Outcome(current_app.extensions["bridge"], req.model, started)
    return responder.result(Generation(first, events, stream, shape, outcome, output))


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


class Generation:
    """A running local job as native response objects: streamed lines, or one merged object."""

    def __init__(self, first: Chunk | Done, events: Iterator[Chunk | Done], stream: JobStream,
                 shape: Shape, outcome: Outcome, output: OutputPlan) -> None:
        self.first, self.events, self.stream = first, events, stream
        self.shape, self.outcome, self.output = shape, outcome, output
        self.done: Done | None = None  # the job's last event, once it has come

    @property
    def stop_sequence(self) -> str:
        """The `stop` string that ended the generation ("" for EOS or a length limit)."""
        return self.done.stop_sequence if self.done else ""

    def lines(self) -> Iterator[dict[str, Any]]:
        """Chunk objects, then the final one; a failure mid-way becomes a last {"error"} line."""
        return errors_as_last_line(self._objects())

    def _objects(self) -> Iterator[dict[str, Any]]:
        with closing(self._parsed()) as items:
            for item in items:
                if isinstance(item, Done):
                    yield self.shape.final(item, self.outcome.started)
                else:
                    yield self.shape.chunk(item)

    def merged(self) -> dict[str, Any]:
        """The final object holding the whole output (failures raise: an HTTP status)."""
        total = Delta()
        with closing(self._parsed()) as items:
            for item in items:
                if isinstance(item, Done):
                    return self.shape.final(item, self.outcome.started, total)
                total.content += item.content
                total.thinking += item.thinking
                total.tool_calls += item.tool_calls
        raise AssertionError("a job always ends with Done")

    def _parsed(self) -> Iterator[Delta | Done]:
        parser = self.output.parser()  # after the first event: the engine has filled the probe
        done, error = None, "client disconnected"
        try:
            event: Chunk | Done = self.first
            while not isinstance(event, Done):
                delta = parser.feed(event.text)
                if delta:
                    yield delta
                event = next(self.events)
            tail = parser.flush()
            if tail:
                yield tail
            done, error = event, None
            self.done = event
            yield event
        except BridgeError as exc:
            error = exc.message
            raise
        finally:
            self.stream.close()  # a client that went away cancels its generation
            self.outcome.finish(done, error)


class Responder(Protocol):
    """Turns a local generation into the HTTP response of one API flavour."""

    def result(self, generation: Generation) -> Response: ...

    def loaded(self, body: dict[str, Any]) -> Response: ...


class NativeResponder:
    """Ollama's NDJSON stream or one JSON object."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def result(self, generation: Generation) -> Response:
        if self.stream:
            return ndjson_stream(generation.lines())
        return json_response(generation.merged())

    def loaded(self, body: dict[str, Any]) -> Response:
        return json_response(body)


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

    def chunk(self, delta: Delta) -> dict[str, Any]:
        raise NotImplementedError

    def final(self, done: Done, started: int, total: Delta | None = None) -> dict[str, Any]:
        raise NotImplementedError


class GenerateShape(Shape):
    req: GenerateRequest

    def text(self, delta: Delta) -> dict[str, Any]:
        out = {"response": delta.content}
        if delta.thinking:
            out["thinking"] = delta.thinking
        return out

    def chunk(self, delta: Delta) -> dict[str, Any]:
        return {**self.base(), **self.text(delta), "done": False}

    def final(self, done: Done, started: int, total: Delta | None = None) -> dict[str, Any]:
        out = {**self.base(), **self.text(total or Delta()), "done": True, "done_reason": done.done_reason}
        if not self.req.raw:
            out["context"] = done.context
        return {**out, **self.metrics(done, started)}


class ChatShape(Shape):
    def message(self, delta: Delta) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": delta.content}
        if delta.thinking:
            msg["thinking"] = delta.thinking
        if delta.tool_calls:
            msg["tool_calls"] = delta.tool_calls
        return msg

    def chunk(self, delta: Delta) -> dict[str, Any]:
        return {**self.base(), "message": self.message(delta), "done": False}

    def final(self, done: Done, started: int, total: Delta | None = None) -> dict[str, Any]:
        # Ollama keeps done_reason "stop" after tool calls (/v1 turns it into "tool_calls").
        return {**self.base(), "message": self.message(total or Delta()), "done": True,
                "done_reason": done.done_reason, **self.metrics(done, started)}
