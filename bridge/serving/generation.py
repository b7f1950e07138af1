"""The MLX side of a generation, shared by /api/chat, /api/generate and the /v1 layers.

A view parses its request and hands `dispatch` a handler from here (`chat_handler`,
`generate_handler`); for an MLX target the handler renders and tokenizes the prompt on the
request thread, submits one engine `Job` (`make_job`) and waits for the first event, so that a
failure before any output is still an HTTP status (or the next target). The running job then
becomes a `Generation`, which a `Responder` (one per API flavour) turns into the response.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from typing import Any, Protocol

from flask import Response

from bridge.engine import Chunk, Done, Job, PromptSpec
from bridge.engine.jobs import TokenLogprob
from bridge.errors import BridgeError, Unsupported
from bridge.http.web import client_gone_probe, context, json_response, rfc3339
from bridge.routing.dispatch import LocalHandler
from bridge.routing.router import Plan
from bridge.serving.images import decode_images
from bridge.serving.local import JobStream, LocalModel
from bridge.serving.output import Delta, OutputPlan, plan_output
from bridge.serving.shapes import ChatShape, GenerateShape, Shape
from bridge.serving.thinking import template_switches
from bridge.state import bridge
from bridge.stats.tracking import LocalOutcome
from bridge.wire.native_out import errors_as_last_line
from bridge.wire.options import Options
from bridge.wire.schemas import ChatRequest, Common, GenerateRequest


class JobRequest(Protocol):
    """What `make_job` reads from a parsed request (chat, generate, embeddings)."""

    keep_alive: float | None
    options: Options


def make_job(req: JobRequest, model: LocalModel, plan: Plan, spec: PromptSpec | None) -> Job:
    """The engine job for a request. Options: the request's, then the admin row's defaults,
    then the mapping file's; what none sets keeps Ollama's default (Options' field defaults).
    keep_alive: the request's, then the mapping's (the engine falls back to OLLAMA_KEEP_ALIVE)."""
    keep_alive = req.keep_alive if req.keep_alive is not None else model.entry.keep_alive
    # One merge: `merged` fills only what the request left unset, so a second merge would let
    # the mapping's value override the admin row's one.
    options = req.options.merged({**model.entry.options, **plan.defaults})
    if options.num_ctx == 0 and bridge().config.context_length:  # OLLAMA_CONTEXT_LENGTH
        options = replace(options, num_ctx=bridge().config.context_length)
    draft = bridge().local.draft_path(model) if spec is not None else None
    return Job(model.key, model.entry.name, spec=spec, options=options, keep_alive=keep_alive,
               request_id=context().request_id, draft_path=draft,
               lookup=model.entry.lookup if spec is not None else None)


def generate_handler(req: GenerateRequest, responder: Responder) -> LocalHandler:
    """The MLX side of a generate request (also behind /v1/completions)."""

    def local(model: LocalModel, plan: Plan) -> Response:
        if not (req.prompt or req.system or req.template or req.context or req.images):
            return responder.loaded(load_or_unload(req, model, plan, {"response": ""}))
        check_images(req, model, bool(req.images))
        check_capabilities(req, model)
        output = plan_output(req.think, model.description.capabilities, None, req.format)
        spec = PromptSpec(prompt=req.prompt, system=req.system, template=req.template,
                          suffix=req.suffix, raw=req.raw, context=req.context,
                          template_vars=switches(req, model), truncate=req.truncate,
                          images=decode_images(req.images, "images"),
                          logits_processor_factory=output.factory(bridge().tables))
        return run(req, model, plan, spec, GenerateShape(req), output, responder)

    return local


def chat_handler(req: ChatRequest, responder: Responder) -> LocalHandler:
    """The MLX side of a chat request (also behind /v1/chat/completions, /v1/messages and
    /v1/responses)."""

    def local(model: LocalModel, plan: Plan) -> Response:
        if not req.messages:
            empty = {"message": {"role": "assistant", "content": ""}}
            return responder.loaded(load_or_unload(req, model, plan, empty))
        check_chat(req, model)
        output = plan_output(req.think, model.description.capabilities, req.tools, req.format,
                             req.forced_tools)
        spec = PromptSpec(messages=template_messages(req), tools=req.tools or None,
                          template_vars=switches(req, model), truncate=req.truncate,
                          logits_processor_factory=output.factory(bridge().tables))
        return run(req, model, plan, spec, ChatShape(req), output, responder)

    return local


def check_chat(req: ChatRequest, model: LocalModel) -> None:
    """What the MLX side cannot do with this chat: Unsupported (400, or the next target)."""
    check_images(req, model, any(m.images for m in req.messages))
    check_capabilities(req, model)


def check_images(req: Common, model: LocalModel, has_images: bool) -> None:
    """Images go to a vision model (mlx-vlm); any other model cannot take them."""
    if has_images and "vision" not in model.description.capabilities:
        raise Unsupported(f'"{req.model}" does not support images')


def template_messages(req: ChatRequest) -> list[dict[str, Any]]:
    """The messages for the chat template; a message's images decoded under "images"."""
    out = []
    for i, m in enumerate(req.messages):
        msg = m.to_template()
        if m.images:
            msg["images"] = decode_images(m.images, f"messages[{i}].images")
        out.append(msg)
    return out


def switches(req: Common, model: LocalModel) -> dict[str, Any]:
    """The chat-template variables for the request's `think` on this model's template."""
    return template_switches(req.think, model.description.think_switches)


def check_capabilities(req: Common, model: LocalModel) -> None:
    caps = model.description.capabilities
    if req.think and "thinking" not in caps:
        raise Unsupported(f'"{req.model}" does not support thinking')
    if getattr(req, "tools", None) and "tools" not in caps:  # only a chat has tools
        raise Unsupported(f"{model.entry.name} does not support tools")


# A context no prompt reaches: counting never truncates (the count is all it computes).
COUNT_CONTEXT = 1 << 40


def prompt_token_count(req: ChatRequest, model: LocalModel, plan: Plan) -> int:
    """The chat's prompt length in tokens through the model's chat template.

    Counted on the engine thread (which owns the tokenizer) by a job that generates nothing:
    with num_predict 0 the engine renders and tokenizes the prompt and answers Done at once.
    """
    check_chat(req, model)
    spec = PromptSpec(messages=template_messages(req), tools=req.tools or None,
                      template_vars=switches(req, model), truncate=False)
    job = make_job(req, model, plan, spec)
    job.options = replace(job.options, num_predict=0, num_ctx=COUNT_CONTEXT)
    count = 0
    for event in bridge().local.run(job):
        if isinstance(event, Done):
            count = event.prompt_eval_count
    return count


def load_or_unload(req: Common, model: LocalModel, plan: Plan,
                   body: dict[str, Any]) -> dict[str, Any]:
    """Empty prompt/messages: load the model, or unload it with keep_alive 0 (one object)."""
    done = None
    # The request-side tokenizer loads beside the weights: the first request pays for neither.
    preload = threading.Thread(target=bridge().local.preload, args=(model,), daemon=True,
                               name="tokenizer-preload")
    if req.keep_alive != 0:
        preload.start()
    for event in bridge().local.run(make_job(req, model, plan, None)):
        if isinstance(event, Done):
            done = event
    if preload.is_alive():
        preload.join()
    assert done is not None
    return {"model": req.model, "created_at": rfc3339(), **body, "done": True,
            "done_reason": done.done_reason}


def run(req: Common, model: LocalModel, plan: Plan, spec: PromptSpec, shape: Shape,
        output: OutputPlan, responder: Responder) -> Response:
    """Submit the job; errors before the first event become an HTTP status, later ones a line."""
    if req.debug_render_only:
        return json_response(debug_render(req, model, spec, shape))
    state, job = bridge(), make_job(req, model, plan, spec)
    # top_logprobs alone asks for logprobs too (rather than being ignored, as in Ollama).
    job.logprobs, job.top_logprobs = req.logprobs or req.top_logprobs > 0, req.top_logprobs
    state.local.tokenize(model, job)  # here, not on the engine thread: a huge prompt stalls no one
    stream = state.local.run(job, client_gone_probe())  # a hang-up cancels it, streamed or not
    events = iter(stream)
    try:
        first = next(events)  # raises here (-> status code) if the job fails before any output
    except BaseException:
        stream.close()
        raise
    outcome = LocalOutcome(state.tracker, context())
    return responder.result(Generation(first, events, stream, shape, outcome, output))


def debug_render(req: Common, model: LocalModel, spec: PromptSpec, shape: Shape) -> dict:
    """Ollama's answer to `_debug_render_only`: the prompt as the template renders it, nothing
    generated (one object, streamed or not; `message`/`response` empty, `done` false)."""
    text = bridge().local.tokenizers.render(model.key, model.description.digest, spec)
    images = len(spec.images) + sum(len(m.get("images") or []) for m in spec.messages or [])
    info: dict[str, Any] = {"rendered_template": text}
    if images:
        info["image_count"] = images
    empty = ({"message": {"role": "", "content": ""}} if isinstance(shape, ChatShape)
             else {"response": ""})
    return {"model": req.model, "created_at": rfc3339(), **empty, "done": False,
            "_debug_info": info}


class Generation:
    """A running local job as native response objects: streamed lines, or one merged object."""

    def __init__(self, first: Chunk | Done, events: Iterator[Chunk | Done], stream: JobStream,
                 shape: Shape, outcome: LocalOutcome, output: OutputPlan) -> None:
        self.first, self.events, self.stream = first, events, stream
        self.shape, self.outcome, self.output = shape, outcome, output
        self.started = outcome.ctx.started_ns  # total_duration counts from the request's start
        self.done: Done | None = None  # the job's last event, once it has come
        self._items: Iterator[Delta | Done] | None = None  # the running _parsed(), if any
        self._ended = False  # the job stopped and its outcome recorded

    @property
    def stop_sequence(self) -> str:
        """The `stop` string that ended the generation ("" for EOS or a length limit)."""
        return self.done.stop_sequence if self.done else ""

    def lines(self) -> Iterator[dict[str, Any]]:
        """Chunk objects, then the final one; a failure mid-way becomes a last {"error"} line."""
        return errors_as_last_line(self._objects())

    def close(self) -> None:
        """End it now: the response is closed (written out, or the client went away). Run by
        the server through `Response.call_on_close`. Closing the writers' generators is not
        enough: the /v1/messages and /v1/responses writers send their opening events before
        asking for a line, and a generator never started has no `finally` to run, so a client
        that hung up after those events left its job generating to the limit."""
        if self._items is not None:
            self._items.close()  # its `finally`: the job cancelled, the outcome recorded
        if not self._ended:  # closed before its lines were asked for (a hang-up that early)
            self._ended = True
            self.stream.close()
            self.outcome.finish(None, "client disconnected")

    def streamed(self, response: Response) -> Response:
        """`response` (a stream of this generation), ending it when the server closes it."""
        response.call_on_close(self.close)
        return response

    def _objects(self) -> Iterator[dict[str, Any]]:
        with closing(self._parsed()) as items:
            self._items = items
            for item in items:
                if isinstance(item, Done):
                    yield self.shape.final(item, self.started)
                else:
                    yield self.shape.chunk(item)

    def merged(self) -> dict[str, Any]:
        """The final object holding the whole output (failures raise: an HTTP status)."""
        total = Delta()
        with closing(self._parsed()) as items:
            for item in items:
                if isinstance(item, Done):
                    return self.shape.final(item, self.started, total)
                total.content += item.content
                total.thinking += item.thinking
                total.tool_calls += item.tool_calls
                total.logprobs += item.logprobs
        raise AssertionError("a job always ends with Done")

    def _parsed(self) -> Iterator[Delta | Done]:
        parser = self.output.parser()  # after the first event: the engine has filled the probe
        done, error = None, "client disconnected"
        try:
            event: Chunk | Done = self.first
            scored: list[TokenLogprob] = []  # logprobs of text the parser still holds
            while not isinstance(event, Done):
                delta = parser.feed(event.text)
                scored += event.logprobs
                if delta:
                    delta.logprobs, scored = scored, []
                    yield delta
                event = next(self.events)
            tail = parser.flush()
            tail.logprobs = scored
            if tail:
                yield tail
            done, error = event, None
            self.done = event
            yield event
        except BridgeError as exc:
            error = exc.message
            raise
        finally:
            self._ended = True
            self.stream.close()  # a client that went away cancels its generation
            self.outcome.finish(done, error)


class Responder(Protocol):
    """Turns a local generation into the HTTP response of one API flavour."""

    def result(self, generation: Generation) -> Response: ...

    def loaded(self, body: dict[str, Any]) -> Response: ...
