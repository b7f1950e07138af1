"""The vision path: a vision-language model's jobs, one at a time, on mlx-vlm. Engine thread only.

A job for a VLM is admitted here rather than in prepare.admit. With images, mlx-vlm's processor
renders the chat (each message's images become the model's placeholders), cuts the images into
patches and expands the placeholders to one token per image feature, so the prompt tokens exist
only after the images are known. Without images the request thread has tokenized the prompt as
for a text model (bridge/serving/prompting.py), and those tokens are used as they are.

The runner drives mlx-vlm's `generate_step` one token per engine step, like SingleRunner, so
the other models' runners keep taking their turns between two tokens of a VLM job. The first
step runs the vision tower and the whole prefill (mlx-vlm has no progress callback to stop it
half-way; cancellation is seen at the next step).

No prompt cache: a cached prefix holds the image features of the request that made it, and the
token ids of two different images are the same placeholders, so a reuse across images would
answer about the wrong picture. Each job prefills from scratch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bridge.engine.jobs import Failed, Job, PromptSpec
from bridge.engine.models import LoadedModel
from bridge.engine.prepare import (
    Ended,
    Entry,
    _call_factory,
    fit_context,
    log_cached,
    make_processors,
    sampler_for,
    vocab_width,
)
from bridge.engine.prompts import chat_text, generate_text
from bridge.engine.sink import TokenSink
from bridge.errors import BadRequest, ClientClosed

log = logging.getLogger(__name__)


@dataclass
class VisionEntry(Entry):
    """An admitted VLM job: the prompt tokens plus the processor's other model inputs."""

    pixel_values: Any = None
    mask: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # image_grid_thw and the like
    images: int = 0


def admit_vision(job: Job, loaded: LoadedModel, load_ns: int) -> VisionEntry:
    """Render the chat with its images, run the processor, fit the window (raises BridgeError)."""
    assert job.spec is not None
    if job.spec.tokens is not None:  # text only, tokenized on the request thread (cut to fit)
        _no_media_in_context(job.spec, loaded)  # the request thread put `context` first
        images: list[Any] = []
        inputs: dict[str, Any] = {}
        processed = tokens = list(job.spec.tokens)
    else:
        text, images = render(loaded, job.spec)
        inputs = _process(loaded, text, images)
        processed = [int(t) for t in inputs.pop("input_ids").reshape(-1).tolist()]
        tokens = _with_context(job.spec, processed, loaded)
    context = job.options.context(loaded.context_length)
    if images and len(tokens) >= context:  # cutting the front would cut image placeholders
        raise BadRequest(f"the prompt with its images is {len(tokens)} tokens, more than the "
                         f"context length ({context}); raise num_ctx or send smaller images")
    tokens, limit = fit_context(tokens, job.options, context, job.spec.truncate)
    mask = inputs.pop("attention_mask", None)
    if mask is not None and tokens != processed:  # context added or the front cut
        import mlx.core as mx

        mask = mx.ones((1, len(tokens)), dtype=mask.dtype)  # one sequence: nothing padded
    processors = make_processors(job.options, context, vocab_width(loaded))
    if job.spec.logits_processor_factory is not None:
        processors.append(_call_factory(job.spec.logits_processor_factory, loaded.tokenizer))
    sink = TokenSink(loaded.tokenizer, job.events.put, prompt=tokens, max_tokens=max(limit, 0),
                     stop=job.options.stop, load_duration=load_ns)
    return VisionEntry(job, loaded, tokens, limit, sampler_for(loaded, job.options), processors,
                       sink, pixel_values=inputs.pop("pixel_values", None),
                       mask=mask, extra=inputs, images=len(images))


def render(loaded: LoadedModel, spec: PromptSpec) -> tuple[str, list[Any]]:
    """The prompt text (with the model's image placeholders) and the images, in prompt order."""
    if spec.messages is None and (spec.raw or spec.template):
        if spec.images:
            raise BadRequest("images need the model's chat template: they cannot be sent with "
                             "`raw` or a `template` override")
        return generate_text(loaded.tokenizer, spec), []
    if spec.messages is None:
        if spec.suffix:
            raise BadRequest("this model does not support insert (suffix)")
        messages: list[dict[str, Any]] = [{"role": "system", "content": spec.system}] \
            if spec.system else []
        messages.append({"role": "user", "content": spec.prompt, "images": list(spec.images)})
    else:
        messages = spec.messages
    images: list[Any] = []
    shaped = [_message(loaded, m, images) for m in messages]
    if not images:  # text only: exactly what a text model renders (tools, thinking...)
        return chat_text(loaded.tokenizer, shaped, spec.tools, spec.template_vars), []
    return _chat_with_images(loaded, shaped, spec), images


def _message(loaded: LoadedModel, message: dict[str, Any], images: list[Any]) -> dict[str, Any]:
    """One message in the shape the model's template expects: mlx-vlm's content parts (or image
    tokens) for a message with images; every other key (tool calls, names) kept."""
    out = {k: v for k, v in message.items() if k != "images"}
    own = message.get("images") or []
    if not own:
        return out
    role = out.get("role")
    if role not in ("user", "tool"):  # mlx-vlm places image tokens on user turns only
        raise BadRequest(f"images are accepted on user and tool messages, not on {role!r} ones")
    from mlx_vlm.prompt_utils import get_message_json

    images.extend(own)
    try:  # shaped as a user turn (a tool result's screenshot too), then given its role back
        shaped = get_message_json(loaded.model.config.model_type, out.get("content") or "",
                                  "user", num_images=len(own))
    except ValueError as exc:  # e.g. a model that takes one image per chat
        raise BadRequest(str(exc)) from None
    content = shaped.get("content") if isinstance(shaped, dict) else shaped
    return {**out, "content": content}


def _chat_with_images(loaded: LoadedModel, messages: list[dict[str, Any]],
                      spec: PromptSpec) -> str:
    from mlx_vlm.prompt_utils import get_chat_template

    continue_last = messages[-1]["role"] == "assistant"
    kwargs: dict[str, Any] = dict(spec.template_vars)  # the reasoning switches of `think`
    if spec.tools:
        kwargs["tools"] = spec.tools
    if continue_last:
        kwargs["continue_final_message"] = True
    try:
        text = get_chat_template(loaded.processor, messages, not continue_last, **kwargs)
    except Exception as exc:  # Jinja templates raise anything; the cause is the request
        raise BadRequest(f"the model's chat template rejected the messages: {exc}") from None
    return text if isinstance(text, str) else loaded.tokenizer.decode(text)


def _process(loaded: LoadedModel, text: str, images: list[Any]) -> dict[str, Any]:
    """mlx-vlm's processor: tokens (placeholders expanded) and pixel values."""
    from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

    config = loaded.model.config
    try:
        return dict(prepare_inputs(
            loaded.processor, images=images or None, prompts=text,
            image_token_index=getattr(config, "image_token_index", None),
            add_special_tokens=should_add_special_tokens(config.model_type, loaded.processor),
        ))
    except (ValueError, TypeError, OSError) as exc:  # an image the processor cannot use
        raise BadRequest(f"the model's processor rejected the input: {exc}") from None


def _with_context(spec: PromptSpec, tokens: list[int], loaded: LoadedModel) -> list[int]:
    """/api/generate's `context` (an earlier answer's tokens) goes before the new prompt."""
    if not spec.context or spec.messages is not None:
        return tokens
    vocab = len(loaded.tokenizer)
    if any(not 0 <= t < vocab for t in spec.context):
        raise BadRequest("context contains token ids outside this model's vocabulary "
                         f"(0..{vocab - 1})")
    _no_media_in_context(spec, loaded)
    return list(spec.context) + tokens


def _no_media_in_context(spec: PromptSpec, loaded: LoadedModel) -> None:
    """An earlier answer's image placeholders cannot be fed again without their pixels."""
    if not spec.context or spec.messages is not None:
        return
    media = {getattr(loaded.model.config, k, None) for k in ("image_token_id", "video_token_id",
                                                             "image_token_index")} - {None}
    if media.intersection(spec.context):
        raise BadRequest("context holds image placeholders from an answer about images; "
                         "send the conversation with its images as a chat instead")


class VisionRunner:
    """Runs one VLM job, one token per `step()`, on mlx-vlm's generate_step."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model_key = loaded.key
        self.entry: VisionEntry | None = None
        self._iter: Any = None

    def __len__(self) -> int:
        return int(self.entry is not None)

    def accepts(self, job: Job) -> bool:
        return False  # one job at a time: mlx-vlm's image inputs do not batch with ours

    def add(self, entry: Entry) -> None:
        assert isinstance(entry, VisionEntry)
        self.entry = entry
        entry.sink.cached_tokens = 0
        log_cached(entry, 0)

    def step(self) -> list[Ended]:
        """Generate one token (the first step: vision tower and prefill); the job once ended."""
        entry = self.entry
        if entry is None:
            return []
        if entry.job.cancelled.is_set():
            log.info("generation canceled request_id=%s model=%s", entry.job.request_id,
                     entry.job.model_name)
            return self._end(Failed(ClientClosed("request canceled")))
        if self._iter is None:
            self._start(entry)
        token, _ = next(self._iter)
        if not entry.sink.add(int(token)):
            return []
        assert entry.sink.final is not None
        return self._end(entry.sink.final)

    def _start(self, entry: VisionEntry) -> None:
        import mlx.core as mx
        from mlx_vlm.generate import generate_step

        if entry.job.options.seed >= 0:
            mx.random.seed(entry.job.options.seed)
        log.info("vision prefill request_id=%s model=%s images=%d prompt_tokens=%d",
                 entry.job.request_id, entry.job.model_name, entry.images, len(entry.tokens))
        self._iter = generate_step(
            mx.array(entry.tokens)[None], self.loaded.model, entry.pixel_values, entry.mask,
            max_tokens=-1, sampler=entry.sampler, logits_processors=entry.processors,
            **entry.extra,
        )

    def _end(self, event: Any) -> list[Ended]:
        entry = self.entry
        assert entry is not None
        self.close()
        return [Ended(entry.job, entry.loaded, event)]

    def abort(self, event: Failed) -> list[Ended]:
        """End the job with `event` (engine stopping or the model's step failing)."""
        return [] if self.entry is None else self._end(event)

    def close(self) -> None:
        """Drop the generator, its KV cache and the image inputs."""
        if self._iter is not None:
            self._iter.close()
        self._iter = self.entry = None
