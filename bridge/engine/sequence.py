"""One running generation: mlx-lm's generate_step feeding a TokenSink. Engine thread only."""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest
from ..options import Options
from .jobs import Job
from .models import LoadedModel
from .prompts import prompt_tokens
from .sink import TokenSink


class Cancelled(Exception):
    """Raised inside MLX callbacks to abandon a job whose client went away."""


def make_sampling(options: Options, context: int, vocab: int) -> tuple[Any, list[Any]]:
    """mlx-lm sampler and logits processors for Ollama's options."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    sampler = make_sampler(
        temp=max(options.temperature, 0.0),
        top_p=options.top_p if 0 < options.top_p < 1 else 0.0,
        min_p=min(max(options.min_p, 0.0), 1.0),
        # top_k >= vocab means "no cut"; mlx-lm's compiled top-k would fail on it.
        top_k=options.top_k if 0 < options.top_k < vocab else 0,
    )
    window = context if options.repeat_last_n < 0 else options.repeat_last_n
    processors = []
    if window > 0:
        processors = make_logits_processors(
            repetition_penalty=options.repeat_penalty if options.repeat_penalty != 1.0 else None,
            repetition_context_size=window,
            presence_penalty=options.presence_penalty or None,
            presence_context_size=window,
            frequency_penalty=options.frequency_penalty or None,
            frequency_context_size=window,
        )
    return sampler, processors


def fit_context(tokens: list[int], options: Options, context: int, truncate: bool) -> tuple[list[int], int]:
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


class Sequence:
    """A job being generated one token per `step()`."""

    def __init__(self, job: Job, loaded: LoadedModel, load_ns: int) -> None:
        assert job.spec is not None
        self.job = job
        self.loaded = loaded
        context = job.options.num_ctx or loaded.context_length
        tokens = prompt_tokens(loaded.tokenizer, job.spec)
        if not tokens:
            raise BadRequest("the prompt is empty after templating")
        tokens, limit = fit_context(tokens, job.options, context, job.spec.truncate)
        self.sink = TokenSink(
            loaded.tokenizer, job.events.put, prompt=tokens, max_tokens=max(limit, 0),
            stop=job.options.stop, load_duration=load_ns,
        )
        self.tokens = tokens
        self.limit = limit
        self.context = context
        self._iter: Any = None

    def _start(self) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        if self.job.options.seed >= 0:
            mx.random.seed(self.job.options.seed)
        # The tokenizer's size never exceeds the logits' width, so it bounds top_k safely.
        sampler, processors = make_sampling(self.job.options, self.context, len(self.loaded.tokenizer))
        self._iter = generate_step(
            mx.array(self.tokens), self.loaded.model, max_tokens=-1, sampler=sampler,
            logits_processors=processors, prompt_progress_callback=self._progress,
        )

    def _progress(self, done: int, total: int) -> None:
        if self.job.cancelled.is_set():
            raise Cancelled()

    def step(self) -> bool:
        """Generate one token; True when the job is finished."""
        if self.limit <= 0:
            return self.sink.finish("length")
        if self._iter is None:
            self._start()
        token, _ = next(self._iter)
        return self.sink.add(int(token))

    def close(self) -> None:
        """Drop the generator (and with it the KV cache)."""
        if self._iter is not None:
            self._iter.close()
            self._iter = None
