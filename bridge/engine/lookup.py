"""Prompt-lookup drafting: speculative decoding whose draft is the context itself.

A mapping's `draft: prompt-lookup` proposes, as the next tokens, what followed the latest
earlier occurrence of the context's last n tokens (prompt and output alike). The model checks
the proposal in one forward pass of k+1 tokens and keeps the longest prefix where its own
sample equals the proposal, plus its sample after that prefix: every token yielded IS the
model's sample given the tokens before it, so greedy output is the same as plain decoding and
sampled output has the same distribution. Drafting costs no model at all; it pays when the
answer repeats its context (rewriting or quoting given text, code edits, JSON echo).
Engine thread only (the step imports MLX).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

NAME = "prompt-lookup"  # the mapping's `draft:` value (a reserved word there, not a model name)
# A proposal nothing of which was accepted is a miss; after MISSES in a row drafting pauses for
# a while that doubles each time (up to MAX_PAUSE tokens), so text that never repeats its
# context decodes at the plain cost (a k+1-token pass costs more than a 1-token one).
MISSES = 3
MAX_PAUSE = 64
# A match on the last token alone is weak evidence: it proposes at most this many tokens
# (replaying SmolLM2's greedy answers: free text 0.96x -> 1.07x, a code edit 2.77x -> 2.64x).
ONE_TOKEN_DRAFT = 2
# Proposals come from the last INDEXED tokens of the context (prompt and answer): ~3 dict
# entries per token, built in ~7 ms for 8k tokens.
INDEXED = 8192


@dataclass(frozen=True)
class PromptLookup:
    """The drafting settings: the longest n-gram matched, the tokens proposed per step."""

    ngram: int = 3
    tokens: int = 8

    @classmethod
    def parse(cls, value: Any) -> PromptLookup:
        """`prompt-lookup`, or `{prompt-lookup: {ngram: N, tokens: K}}` (raises ValueError)."""
        if value == NAME:
            return cls()
        if not (isinstance(value, dict) and list(value) == [NAME]):
            raise ValueError(f"expected '{NAME}' or {{{NAME}: {{ngram: N, tokens: K}}}}")
        opts = value[NAME] or {}
        if not isinstance(opts, dict) or set(opts) - {"ngram", "tokens"}:
            raise ValueError(f"{NAME} takes only 'ngram' (1-8) and 'tokens' (1-64)")
        found = cls(**{k: opts.get(k, getattr(cls(), k)) for k in ("ngram", "tokens")})
        for key, top in (("ngram", 8), ("tokens", 64)):
            v = getattr(found, key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
                raise ValueError(f"{NAME} {key} must be an integer from 1 to {top}")
        return found


class NgramIndex:
    """The context, with the latest position after each n-gram (n = 1..max_n) seen in it."""

    def __init__(self, tokens: list[int], max_n: int) -> None:
        self.tokens: list[int] = []
        self.max_n = max_n
        self._after: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n)]
        self.extend(tokens)

    def extend(self, new: list[int]) -> None:
        toks, after = self.tokens, self._after
        for t in new:
            end = len(toks)  # the n-grams ending here now have a continuation: t
            for n in range(1, min(self.max_n, end) + 1):
                after[n - 1][tuple(toks[end - n:end])] = end
            toks.append(t)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching
        suffix (longest n first; ONE_TOKEN_DRAFT for n = 1); [] when even the last token never
        occurred before."""
        toks = self.tokens
        for n in range(min(self.max_n, len(toks)), 0, -1):
            at = self._after[n - 1].get(tuple(toks[-n:]))
            if at is not None:
                return toks[at:at + (k if n > 1 else min(k, ONE_TOKEN_DRAFT))]
        return []


@dataclass
class Counts:
    """What the drafting did, for the engine's `speculative …` log line."""

    proposed: int = 0
    accepted: int = 0


def lookup_generate_step(tokens: list[int], model: Any, cache: list[Any], sampler: Any,
                         lookup: PromptLookup, max_tokens: int,
                         counts: Counts) -> Iterator[tuple[int, Any, bool]]:
    """Yields (token, logprobs, from_draft) like mlx-lm's speculative_generate_step.

    `cache` holds all of `tokens` but the last, which is fed first. After each pass the cache
    is trimmed to the kept tokens before the first of them is yielded: it then holds the
    context and every kept token but the last (the next pass feeds that one). A caller that
    stops mid-way trims the kept tokens it did not take (Solo.close())."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream
    from mlx_lm.models.cache import trim_prompt_cache

    from bridge.engine.solo import loops_mx

    # The latest INDEXED tokens of the context: built on the engine thread whenever a job goes
    # solo, so a long context would stall every other model's streams (250 ms at 32k tokens).
    index = NgramIndex(tokens[-INDEXED:], lookup.ngram)
    logsumexp = loops_mx().logsumexp
    y, done, misses, pause, wait = tokens[-1], 0, 0, 0, 0
    while done < max_tokens:
        draft = [] if wait else index.propose(min(lookup.tokens, max_tokens - done - 1))
        wait = max(0, wait - 1)
        with mx.stream(generation_stream):
            logits = model(mx.array([y, *draft], mx.uint32)[None], cache=cache)[0]
            logprobs = logits - logsumexp(logits, axis=-1, keepdims=True)
            sampled = sampler(logprobs)
        sampled = sampled.tolist()
        n = 0
        while n < len(draft) and sampled[n] == draft[n]:
            n += 1
        trim_prompt_cache(cache, len(draft) - n)
        if draft:
            counts.proposed += len(draft)
            counts.accepted += n
            misses = misses + 1 if n == 0 else 0
            if misses >= MISSES:  # this text does not repeat its context: stop paying for it
                pause = min(MAX_PAUSE, max(1, pause * 2))
                wait, misses = pause, 0
            elif n:
                pause = 0
        out = sampled[:n + 1][:max_tokens - done]
        index.extend(out)
        for i, token in enumerate(out):
            done += 1
            yield token, logprobs[i], i < n
        y = out[-1]
