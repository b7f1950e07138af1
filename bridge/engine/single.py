"""The single path: one job alone on mlx-lm's generate_step, or with its first token early on
the CPU (solo.early_steps); for seeded jobs and unbatchable models."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from bridge.engine.jobs import Failed, Job
from bridge.engine.models import LoadedModel
from bridge.engine.prepare import Ended, Entry, log_cached
from bridge.engine.prompt_cache import PromptCache
from bridge.engine.solo import PREFILL_STEP, cache_offset, early_steps, feed, pipelines
from bridge.errors import ClientClosed

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside mlx-lm's prefill callback to abandon a job whose client went away."""


class SingleRunner:
    """Runs exactly one job, one token per `step()`, reusing and refilling the prompt cache."""

    def __init__(self, loaded: LoadedModel, prompts: PromptCache) -> None:
        self.loaded = loaded
        self.model_key = loaded.key
        self.prompts = prompts
        self.entry: Entry | None = None
        self._iter: Any = None
        self._cache: Any = None
        self._cached = 0

    def __len__(self) -> int:
        return int(self.entry is not None)

    def accepts(self, job: Job) -> bool:
        return False  # one job at a time

    def add(self, entry: Entry) -> None:
        self.entry = entry
        self._cache, self._cached = self.prompts.fetch(self.model_key, entry.tokens)
        entry.sink.cached_tokens = self._cached
        entry.fed = list(entry.tokens)
        log_cached(entry, self._cached)

    def step(self) -> list[Ended]:
        """Generate one token; returns the job once it ended."""
        entry = self.entry
        if entry is None:
            return []
        try:
            if entry.job.cancelled.is_set():
                raise Cancelled()
            finished = self._next(entry)
        except Cancelled:
            log.info("generation canceled request_id=%s model=%s", entry.job.request_id,
                     entry.job.model_name)
            return self._end(Failed(ClientClosed("request canceled")), keep_cache=False)
        if not finished:
            return []
        assert entry.sink.final is not None
        return self._end(entry.sink.final, keep_cache=True)

    def _next(self, entry: Entry) -> bool:
        if self._iter is None:
            self._start(entry)
        token, logprobs = next(self._iter)  # logprobs: the vector the token was sampled from
        entry.fed.append(int(token))
        return entry.sink.add(int(token), logprobs)

    def _start(self, entry: Entry) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache

        if entry.job.options.seed >= 0:
            mx.random.seed(entry.job.options.seed)
        if self._cache is None:
            self._cache = self.loaded.new_cache() or make_prompt_cache(self.loaded.model)
        if not pipelines() and all(hasattr(c, "offset") for c in self._cache):
            self._iter = self._early(entry)  # (offsets tell what the cache holds at the end)
            return
        prefix = entry.tokens[: self._cached]
        self._iter = generate_step(
            mx.array(entry.tokens[self._cached:]), self.loaded.model, max_tokens=-1,
            sampler=entry.sampler, logits_processors=with_prefix(entry.processors, prefix),
            prompt_cache=self._cache, prompt_progress_callback=self._progress,
        )

    def _early(self, entry: Entry) -> Iterator[tuple[int, Any]]:
        """generate_step's prefill, then the first token handed out as soon as it is computed
        (solo.pipelines: MLX on the CPU)."""
        tokens, model, cache = entry.tokens, self.loaded.model, self._cache
        for start in range(self._cached, len(tokens) - 1, PREFILL_STEP):
            self._progress(start, len(tokens))
            feed(model, cache, tokens[start : min(start + PREFILL_STEP, len(tokens) - 1)])
        yield from early_steps(tokens[-1], model, cache, entry.sampler,
                               with_prefix(entry.processors, tokens[:-1]))

    def _progress(self, done: int, total: int) -> None:
        if self.entry is not None and self.entry.job.cancelled.is_set():
            raise Cancelled()

    def _end(self, event: Any, keep_cache: bool) -> list[Ended]:
        entry = self.entry
        assert entry is not None
        if keep_cache and self._iter is not None:
            # every yielded token is fed, but the first one while it is the only one out.
            held = min(cache_offset(self._cache, default=len(entry.fed)), len(entry.fed))
            self.prompts.insert(self.model_key, entry.fed[:held], self._cache)
        self.close()
        return [Ended(entry.job, entry.loaded, event)]

    def abort(self, event: Failed) -> list[Ended]:
        """End the job with `event` (engine stopping or failing)."""
        if self.entry is None:
            return []
        return self._end(event, keep_cache=False)

    def close(self) -> None:
        """Drop the generator and the KV cache."""
        if self._iter is not None:
            self._iter.close()
        self._iter = self._cache = self.entry = None


def with_prefix(processors: list[Any], prefix: list[int]) -> list[Any]:
    """generate_step only sees the uncached rest: give processors the whole sequence."""
    if not processors or not prefix:
        return processors
    import mlx.core as mx

    head = mx.array(prefix)

    def wrap(proc: Any) -> Any:
        return lambda tokens, logits: proc(mx.concatenate([head, tokens]), logits)

    return [wrap(p) for p in processors]

