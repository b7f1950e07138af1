"""Per-job token handling shared by every scheduler: detokenize, stop strings, limits, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .jobs import Chunk, Done, Event


class TokenSink:
    """Turns sampled token ids of one job into Chunk events and a final Done."""

    def __init__(
        self,
        tokenizer: Any,
        emit: Callable[[Event], None],
        *,
        prompt: list[int],
        max_tokens: int,
        stop: tuple[str, ...] = (),
        load_duration: int = 0,
        cached_tokens: int = 0,
    ) -> None:
        self.detokenizer = tokenizer.detokenizer
        self.eos = set(tokenizer.eos_token_ids)
        self.emit = emit
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.stop = stop
        self.load_duration = load_duration
        self.cached_tokens = cached_tokens
        self.tokens: list[int] = []
        self.pending = ""
        self.started_ns = time.perf_counter_ns()
        self.first_token_ns = 0
        self.finished = False
        self.eos_hit = False
        self.final: Done | None = None  # sent by the engine once the model is released

    def add(self, token: int) -> bool:
        """Feed one sampled token; returns True when the job is finished."""
        if not self.first_token_ns:
            self.first_token_ns = time.perf_counter_ns()
        if token in self.eos:
            self.eos_hit = True
            return self.finish("stop")
        self.tokens.append(token)
        self.detokenizer.add_token(token)
        if self._push(self.detokenizer.last_segment):
            return True
        if len(self.tokens) >= self.max_tokens:
            return self.finish("length")
        return False

    def _push(self, text: str) -> bool:
        """Append text, emit what cannot be the start of a stop string; True if a stop hit."""
        self.pending += text
        for stop in self.stop:
            idx = self.pending.find(stop)
            if idx >= 0:
                self.pending = self.pending[:idx]
                self._flush()
                return self.finish("stop", flush=False)
        keep = _longest_stop_prefix(self.pending, self.stop)
        if len(self.pending) > keep:
            self.emit(Chunk(self.pending[: len(self.pending) - keep]))
            self.pending = self.pending[len(self.pending) - keep:]
        return False

    def _flush(self) -> None:
        if self.pending:
            self.emit(Chunk(self.pending))
            self.pending = ""

    def finish(self, reason: str, flush: bool = True) -> bool:
        """Emit the remaining text and the Done event (once)."""
        if self.finished:
            return True
        self.finished = True
        if flush:
            self.detokenizer.finalize()
            self.pending += self.detokenizer.last_segment
            self._flush()
        self.final = self.done(reason)
        return True

    def done(self, reason: str) -> Done:
        now = time.perf_counter_ns()
        first = self.first_token_ns or now
        return Done(
            done_reason=reason,
            prompt_eval_count=len(self.prompt),
            prompt_eval_duration=max(first - self.started_ns, 1),
            eval_count=len(self.tokens) + int(self.eos_hit),
            eval_duration=max(now - first, 1),
            load_duration=self.load_duration,
            cached_tokens=self.cached_tokens,
            context=self.prompt + self.tokens,
        )


def _longest_stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
