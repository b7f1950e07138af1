"""Admit a job: prompt tokens, context window, sampler, processors, sink. Engine thread only."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bridge.engine.jobs import Done, Embedded, Failed, Job
from bridge.engine.models import LoadedModel
from bridge.engine.prompts import prompt_tokens
from bridge.engine.sampling import make_sampler
from bridge.engine.sink import TokenSink
from bridge.errors import BadRequest, BridgeError, EngineError
from bridge.wire.options import Options

log = logging.getLogger(__name__)

_MAX_SAMPLERS = 64


@dataclass
class Entry:
    """One admitted job, ready for a runner."""

    job: Job
    loaded: LoadedModel
    tokens: list[int]  # the whole prompt
    limit: int  # max new tokens
    sampler: Any
    processors: list[Any]
    sink: TokenSink
    fed: list[int] = field(default_factory=list)  # tokens whose KV the model holds (cache key)


@dataclass
class Ended:
    """A job that left its runner; the engine releases the model, then sends `event`."""

    job: Job
    loaded: LoadedModel
    event: Done | Embedded | Failed


def batchable(job: Job) -> bool:
    """A seed asks for a reproducible random stream, which only a job running alone has."""
    return job.options.seed < 0


def admit(job: Job, loaded: LoadedModel, load_ns: int) -> Entry:
    """Render and fit the prompt and build the per-job sampling pieces (raises BridgeError)."""
    assert job.spec is not None
    context = job.options.context(loaded.context_length)
    # Normally rendered and tokenized by the request thread (bridge/serving/prompting.py), so that a
    # huge prompt never stalls this thread; the engine does it when that was not possible.
    tokens = job.spec.tokens
    if tokens is None:
        tokens = prompt_tokens(loaded.tokenizer, job.spec)
    if not tokens:
        raise BadRequest("the prompt is empty after templating")
    tokens, limit = fit_context(tokens, job.options, context, job.spec.truncate)
    processors = make_processors(job.options, context, vocab_width(loaded))
    if job.spec.logits_processor_factory is not None:
        processors.append(_call_factory(job.spec.logits_processor_factory, loaded.tokenizer))
    sink = TokenSink(loaded.tokenizer, job.events.put, prompt=tokens, max_tokens=max(limit, 0),
                     stop=job.options.stop, load_duration=load_ns,
                     top_logprobs=job.top_logprobs if job.logprobs else None)
    return Entry(job, loaded, tokens, limit, sampler_for(loaded, job.options), processors, sink)


def _call_factory(factory: Any, tokenizer: Any) -> Any:
    try:
        return factory(tokenizer)
    except BridgeError:
        raise
    except Exception as exc:
        raise EngineError("could not build the logits processor: "
                          f"{type(exc).__name__}: {exc}") from None


def sampler_for(loaded: LoadedModel, options: Options) -> Any:
    """Ollama's sampler for the job's options (bridge.engine.sampling); equal settings share one
    object, so a batch that shares them samples in one call."""
    vocab = vocab_width(loaded)
    key = (
        max(options.temperature, 0.0),
        options.top_k if 0 < options.top_k < vocab else 0,  # top_k >= vocab: no cut
        min(max(options.top_p, 0.0), 1.0),  # 1: off; 0: the most likely token only (Ollama's)
        min(max(options.min_p, 0.0), 1.0),  # 0: off; 1: only tokens as likely as the first
    )
    if key not in loaded.samplers:
        if len(loaded.samplers) >= _MAX_SAMPLERS:  # arbitrary client settings: stay bounded
            loaded.samplers.clear()
        loaded.samplers[key] = make_sampler(*key)
    return loaded.samplers[key]


def vocab_width(loaded: LoadedModel) -> int:
    """Token ids a request may name: the tokenizer's, and never past the model's logits."""
    width = len(loaded.tokenizer)
    args = getattr(loaded.model, "args", None)
    logits = getattr(args, "vocab_size", None)
    return min(width, logits) if isinstance(logits, int) and logits > 0 else width


def make_processors(options: Options, context: int, vocab: int) -> list[Any]:
    """mlx-lm logits processors for Ollama's penalties (none with the defaults) and OpenAI's
    `logit_bias` (its token ids checked against the vocabulary: a 400 for one outside it)."""
    from mlx_lm.sample_utils import make_logits_processors

    bias = dict(options.logit_bias)
    if bias and max(bias) >= vocab:
        raise BadRequest(f'option "logit_bias": token {max(bias)} is outside the vocabulary '
                         f"(0..{vocab - 1})")
    window = context if options.repeat_last_n < 0 else options.repeat_last_n
    if window <= 0:
        return make_logits_processors(logit_bias=bias) if bias else []
    return make_logits_processors(
        logit_bias=bias or None,
        repetition_penalty=options.repeat_penalty if options.repeat_penalty != 1.0 else None,
        repetition_context_size=window,
        presence_penalty=options.presence_penalty or None,
        presence_context_size=window,
        frequency_penalty=options.frequency_penalty or None,
        frequency_context_size=window,
    )


def fit_context(tokens: list[int], options: Options, context: int,
                truncate: bool) -> tuple[list[int], int]:
    """Apply the context window: returns (prompt tokens, max new tokens)."""
    if len(tokens) >= context:
        if not truncate:
            raise BadRequest("the input length exceeds the context length")
        reserve = options.num_predict if 0 < options.num_predict < context // 2 else context // 4
        keep = max(1, context - reserve)
        tokens = tokens[-keep:]
    remaining = context - len(tokens)
    limit = remaining if options.num_predict < 0 else min(options.num_predict, remaining)
    return tokens, limit


def as_bridge_error(exc: BaseException) -> BridgeError:
    """What the client sees for an exception raised on the engine thread."""
    if isinstance(exc, BridgeError):
        return exc
    return EngineError(f"{type(exc).__name__}: {exc}")


def reset_random_state() -> None:
    """A failure inside a compiled sampler can leave MLX's global RNG state unusable."""
    import time

    import mlx.core as mx

    mx.random.seed(time.time_ns() & (2**63 - 1))


def log_cached(entry: Entry, cached: int) -> None:
    """One line per started job: how much of its prompt the prompt cache served."""
    log.info("prompt request_id=%s model=%s prompt_tokens=%d cached_tokens=%d",
             entry.job.request_id, entry.job.model_name, len(entry.tokens), cached)
