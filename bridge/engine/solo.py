"""A lone job, out of the batch: its own prefill, then mlx-lm's single-sequence decoding."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from bridge.engine.prepare import Entry

log = logging.getLogger(__name__)

# Prompt tokens prefilled per step: a long prompt delays the others' next token by one chunk
# (and a cancel by as much), while chunks this size still run at full BLAS speed on a CPU.
PREFILL_STEP = 512
DRAFT_TOKENS = 3  # tokens the draft proposes per step (mlx-lm's default is 2)


class Solo:
    """The one job of a runner, decoding alone: a batch of one costs more per token (measured
    on the tiny model: 941 against 875 CPU us, issue 17). With a draft model (a mapping's
    `draft:`) it runs mlx-lm's speculative_generate_step: the draft proposes tokens, the model
    checks them all in one forward pass; with `draft: prompt-lookup` the proposal is what
    followed the same n-gram earlier in the context (engine/lookup.py).

    The cache may hold any prefix of `tokens`: the rest of the prompt but its last token is
    prefilled a chunk per `next()`, then the last token runs and decoding starts. `fed` is the
    prompt and every token yielded; the model's cache holds a prefix of it (all of it once the
    plain path is past its first token; `close()` says how much)."""

    def __init__(self, entry: Entry, cache: list[Any] | None, tokens: list[int]) -> None:
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        if cache is None:  # a model without a cache of the bridge's own: mlx-lm's
            cache = make_prompt_cache(entry.loaded.model)
        self.entry, self.cache, self.fed = entry, cache, list(tokens)
        self.drafted = 0  # tokens that came from the draft (accepted)
        self.counts: Any = None  # prompt lookup's proposed/accepted tokens
        self.speculative = False
        self.iter: Iterator[Any] | None = None
        held = cache_offset(cache)
        if held >= len(tokens):  # the last token runs again: its logits give the next one
            trim_prompt_cache(cache, held - len(tokens) + 1)
            held = len(tokens) - 1
        self.prefilled = held

    def next(self) -> bool:
        """Prefill one chunk, or decode one token into the job's sink; True when it finished."""
        if self.iter is None:
            if self._prefill_chunk():
                return False
            self.iter = self._start()
        out = next(self.iter, None)
        if out is None:  # the generator's own limit (set past the job's): end as the limit
            return self.entry.sink.finish("length")
        token = int(out[0])
        if self.speculative and out[2]:
            self.drafted += 1
        self.fed.append(token)
        return self.entry.sink.add(token)

    def _prefill_chunk(self) -> bool:
        """Feed the next chunk of the prompt (all but its last token); False when none is left."""
        end = min(self.prefilled + PREFILL_STEP, len(self.fed) - 1)
        if end <= self.prefilled:
            return False
        feed(self.entry.loaded.model, self.cache, self.fed[self.prefilled:end])
        self.prefilled = end
        return True

    def _start(self) -> Iterator[Any]:
        """The decoding generator, from the prompt's last token (the cache holds the rest)."""
        import mlx.core as mx

        from bridge.engine.single import with_prefix

        loaded, job, entry, tokens = self.entry.loaded, self.entry.job, self.entry, self.fed
        processors = with_prefix(entry.processors, tokens[:-1])
        left = max(1, entry.limit - len(entry.sink.tokens)) + 1  # they take no -1 (endless)
        if job.lookup is not None and not entry.processors:  # the context drafts (lookup.py)
            from bridge.engine.lookup import Counts, lookup_generate_step

            self.counts, self.speculative = Counts(), True
            return lookup_generate_step(tokens, loaded.model, self.cache, entry.sampler,
                                        job.lookup, left, self.counts)
        if job.draft_path and loaded.draft is not None and loaded.draft_key == job.draft_path:
            from mlx_lm.generate import speculative_generate_step
            from mlx_lm.models.cache import make_prompt_cache

            self.draft_cache = make_prompt_cache(loaded.draft)
            context = tokens[:-1]  # the draft sees the context too
            for i in range(0, len(context), PREFILL_STEP):
                feed(loaded.draft, self.draft_cache, context[i : i + PREFILL_STEP])
            self.speculative = True
            return speculative_generate_step(
                mx.array(tokens[-1:]), loaded.model, loaded.draft, max_tokens=left,
                num_draft_tokens=DRAFT_TOKENS, sampler=entry.sampler,
                logits_processors=processors, prompt_cache=self.cache + self.draft_cache)
        if not pipelines():
            return early_steps(tokens[-1], loaded.model, self.cache, entry.sampler, processors)
        from mlx_lm.generate import generate_step

        return generate_step(mx.array(tokens[-1:]), loaded.model, max_tokens=-1,
                             sampler=entry.sampler, logits_processors=processors,
                             prompt_cache=self.cache)

    def close(self) -> int:
        """End the generator; returns how many of `fed` the model's cache holds (trimmed to
        at most all of it)."""
        from mlx_lm.models.cache import trim_prompt_cache

        if self.iter is not None:
            self.iter.close()
        held = cache_offset(self.cache, default=len(self.fed))
        if held > len(self.fed):
            trim_prompt_cache(self.cache, held - len(self.fed))
            held = len(self.fed)
        if self.speculative:
            log.info("speculative request_id=%s tokens=%d from_draft=%d%s",
                     self.entry.job.request_id, len(self.entry.sink.tokens), self.drafted,
                     "" if self.counts is None else
                     f" draft=prompt-lookup proposed={self.counts.proposed}")
        return held


def feed(model: Any, cache: list[Any], tokens: list[int]) -> None:
    """Run `tokens` (one prefill chunk) through the model into its KV cache."""
    import mlx.core as mx

    model(mx.array(tokens)[None], cache=cache)
    mx.eval([c.state for c in cache])


def cache_offset(cache: list[Any], default: int = 0) -> int:
    """How many tokens the model's KV cache holds."""
    return int(getattr(cache[0], "offset", default)) if cache else default


def pipelines() -> bool:
    """Whether MLX computes asynchronously enough that mlx-lm's generate_step, which launches
    token t+1's forward pass before handing out token t, costs no latency. On the CPU
    `mx.async_eval` returns only after most of the work (42 of 50 ms for a SmolLM2 forward,
    issue 17), so there the first token of every answer came a whole forward pass late."""
    import mlx.core as mx

    return mx.default_device() != mx.cpu


def early_steps(token: int, model: Any, cache: list[Any], sampler: Any,
                processors: list[Any]) -> Iterator[tuple[int, Any]]:
    """mlx-lm's generate_step from a prompt's last token (the cache holds the rest), yielding
    (token, the log-probabilities it was sampled from), with the first token handed out as
    soon as it is computed. The rest are pipelined as there: building token t+1's graph while
    token t computes is worth ~8 ms a token on the CPU too (SmolLM2: 51.5 against 59.6 ms
    without). The cache holds every token yielded but the first one while it is out."""
    import mlx.core as mx

    seen = None  # the tokens the logits processors see (with_prefix adds the cached prompt)
    logsumexp = loops_mx().logsumexp

    def step(y: Any) -> tuple[Any, Any]:
        nonlocal seen
        logits = model(y[None], cache=cache)[:, -1, :]
        if processors:
            seen = y if seen is None else mx.concatenate([seen, y])
            for processor in processors:
                logits = processor(seen, logits)
        logprobs = logits - logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logprobs), logprobs.squeeze(0)

    y, logprobs = step(mx.array([token]))
    mx.eval(y, logprobs)
    yield y.item(), logprobs
    upcoming = step(y)
    mx.async_eval(*upcoming)
    n = 1
    while True:
        y, logprobs = upcoming
        upcoming = step(y)
        mx.async_eval(*upcoming)
        yield y.item(), logprobs
        n += 1
        if n % 256 == 0:
            mx.clear_cache()


def loops_mx() -> Any:
    """The `mx` mlx-lm's decoding loops see: mlx.core, or with engine/cpu_attention.py
    installed the same with its fast `logsumexp` (the log-softmax over the vocabulary)."""
    import importlib

    return importlib.import_module("mlx_lm.generate").mx  # (mlx_lm.generate: also a function)
