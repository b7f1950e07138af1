"""Per-job token handling shared by every scheduler: detokenize, stop strings, limits, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.engine.jobs import Chunk, Done, Event, TokenLogprob
from bridge.engine.logprobs import LogprobScorer


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
        top_logprobs: int | None = None,
    ) -> None:
        self.detokenizer = tokenizer.detokenizer
        # top_logprobs None: the job wants no logprobs (nothing is computed for it).
        self.scorer = (None if top_logprobs is None
                       else LogprobScorer(tokenizer, self.detokenizer, top_logprobs))
        self.scored: list[TokenLogprob] = []  # scored tokens not yet sent with a Chunk
        self.eos = set(tokenizer.eos_token_ids)
        self.emit = emit
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.stops = StopScanner(stop)
        self.load_duration = load_duration
        self.cached_tokens = cached_tokens
        self.tokens: list[int] = []
        self.pending = ""
        self.started_ns = time.perf_counter_ns()
        self.first_token_ns = 0
        self.finished = False
        self.eos_hit = False
        self.stop_hit = ""  # the stop string that matched, if one did
        self.cut_tail = False  # the end dropped incomplete bytes (Done.cut_tail)
        self.final: Done | None = None  # sent by the engine once the model is released

    def add(self, token: int, logprobs: Any = None) -> bool:
        """Feed one sampled token (and the log-softmax vector it was sampled from, which only a
        job that asked for logprobs reads); returns True when the job is finished."""
        if not self.first_token_ns:
            self.first_token_ns = time.perf_counter_ns()
        if token in self.eos:
            self.eos_hit = True
            return self.finish("stop")
        if self.scorer is not None and logprobs is not None:
            self.scored.append(self.scorer.score(token, logprobs))
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
        hit = self.stops.feed(text)
        if hit is not None:
            after, length = hit  # the stop string ends `after` characters before text's end
            start = len(self.pending) - after - length
            self.stop_hit = self.pending[start : start + length]
            self.pending = self.pending[:start]
            self._flush()
            return self.finish("stop", flush=False)
        keep = self.stops.partial  # a suffix that may still grow into a stop string
        if len(self.pending) > keep:
            self._send(self.pending[: len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
        return False

    def _flush(self) -> None:
        if self.pending:
            self._send(self.pending)
            self.pending = ""

    def _send(self, text: str) -> None:
        """A Chunk with the tokens scored since the last one (their text is in it, or was
        cut as a stop string)."""
        scored, self.scored = self.scored, []
        self.emit(Chunk(text, scored))

    def finish(self, reason: str, flush: bool = True) -> bool:
        """Emit the remaining text and the Done event (once)."""
        if self.finished:
            return True
        self.finished = True
        if flush:
            self.detokenizer.finalize()
            # A character whose bytes were cut off by the end decodes as U+FFFD: dropped, as
            # Ollama's runner drops incomplete bytes at the end (spec §9).
            last = self.detokenizer.last_segment
            self.cut_tail = last.endswith("\ufffd")
            self.pending += last.rstrip("\ufffd")
            self._flush()
        if self.scored:  # tokens whose text never came out (a stop string): still reported
            self._send("")
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
            stop_sequence=self.stop_hit if reason == "stop" else "",
            cut_tail=self.cut_tail,
        )


class StopScanner:
    """Finds stop strings in streamed text, one Knuth-Morris-Pratt automaton per stop string.

    Each automaton's state is the length of the longest prefix of its stop string that the text
    seen so far ends with, so the output is never scanned again: the work per token is
    O(number of stops x length of the token's text), whatever the length of the output.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.failure = [_failure(stop) for stop in self.stops]
        self.states = [0] * len(self.stops)

    @property
    def partial(self) -> int:
        """Length of the longest suffix of the text so far that is a proper prefix of a stop."""
        return max(self.states, default=0)

    def feed(self, text: str) -> tuple[int, int] | None:
        """Advance over `text`; on the first completed stop string, (characters of `text` after
        the match, the stop's length), else None."""
        hit: tuple[int, int] | None = None
        for i, stop in enumerate(self.stops):
            state = self.states[i]
            if state == 0 and stop[0] not in text:
                continue  # the common case, in C: this token cannot touch this stop string
            fail = self.failure[i]
            for pos, char in enumerate(text):
                while state and stop[state] != char:
                    state = fail[state - 1]
                if stop[state] == char:
                    state += 1
                if state == len(stop):
                    # the match that ends first wins; of two ending together, the longer
                    found = (len(text) - pos - 1, len(stop))
                    hit = found if hit is None else max(hit, found)
                    break
            self.states[i] = state
        return hit


def _failure(stop: str) -> list[int]:
    """KMP failure function: for each prefix length n, the longest proper border of stop[:n]."""
    table = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = table[k - 1]
        if stop[i] == stop[k]:
            k += 1
        table[i] = k
    return table
