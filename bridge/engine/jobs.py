"""Work items handed to the engine thread, and the events it sends back."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.engine.lookup import PromptLookup
from bridge.errors import BridgeError
from bridge.wire.options import Options


@dataclass
class PromptSpec:
    """What to run: a chat (messages) or a completion (prompt); rendered on the engine thread."""

    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    prompt: str = ""
    system: str = ""
    template: str = ""
    suffix: str = ""
    raw: bool = False
    context: list[int] = field(default_factory=list)
    # Extra chat-template variables: the reasoning switches a request's `think` sets
    # (bridge/serving/thinking.py template_switches), e.g. {"enable_thinking": False}.
    template_vars: dict[str, Any] = field(default_factory=dict)
    truncate: bool = True
    # The prompt already rendered and tokenized on the request thread; None: the engine does it.
    tokens: list[int] | None = None
    # /api/generate's images (decoded, for a vision model); a chat's are on its messages, each
    # message dict's "images" list (bridge/engine/vision.py renders them).
    images: list[Any] = field(default_factory=list)
    # The chat text `tokens` were made from (request thread): with the answer, it lets the next
    # turn reuse the generated token ids (bridge/serving/prompting.py, Transcripts).
    rendered: str | None = None
    # Set for an embedding job: the texts to embed (no template, no generation).
    embed_inputs: list[str] | None = None
    # Their tokens, fitted to the context on the request thread; None: the engine makes them.
    embed_tokens: list[list[int]] | None = None
    # Structured output: called on the engine thread with the model's tokenizer; returns an
    # mlx-lm logits processor `(tokens, logits) -> logits`. `tokens` is the whole sequence so
    # far (prompt, then generated), in the batched and the single path alike.
    logits_processor_factory: Callable[[Any], Callable[[Any, Any], Any]] | None = None


@dataclass
class TokenLogprob:
    """One sampled token's log-probability (bridge/engine/logprobs.py), Ollama's fields."""

    token: str
    logprob: float
    bytes: list[int] = field(default_factory=list)
    top: list[TokenLogprob] = field(default_factory=list)  # the most likely tokens at that step


@dataclass
class Chunk:
    """A piece of generated text; with `logprobs`, one entry per token that made it (a job
    that asked): a token whose text is held back (a partial character, a possible stop string)
    comes with the chunk that finally carries it."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Done:
    """The end of a job, with Ollama's metrics (durations in nanoseconds)."""

    done_reason: str
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    load_duration: int = 0
    cached_tokens: int = 0
    context: list[int] = field(default_factory=list)
    # The `stop` string that ended the job (done_reason "stop"); "" for EOS or another end.
    # Not in Ollama's objects: the Anthropic layer reports it as `stop_sequence`.
    stop_sequence: str = ""
    # The last tokens' bytes made no whole character and were dropped from the text, so the text
    # is short of `context`: the next turn must not take those ids for that text.
    cut_tail: bool = False


@dataclass
class Embedded:
    """The result of an embedding job: one raw mean-pooled vector per input, in input order."""

    vectors: list[list[float]]
    prompt_eval_count: int = 0
    load_duration: int = 0


@dataclass
class Failed:
    """The job failed; `error` is re-raised on the request thread."""

    error: BridgeError


Event = Chunk | Done | Embedded | Failed

_ids = itertools.count(1)


@dataclass
class Job:
    """One request for the engine: generate, or just load/unload a model (spec is None)."""

    model_path: str
    model_name: str
    spec: PromptSpec | None = None
    options: Options = field(default_factory=Options)
    keep_alive: float | None = None
    request_id: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    # SimpleQueue: put and get are C calls, a tenth of Queue's cost (once per token, on the
    # engine thread and the request's).
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    # Per-token log-probabilities on the Chunks (computed only when asked), with the
    # `top_logprobs` most likely tokens of each step (0..20).
    logprobs: bool = False
    top_logprobs: int = 0
    # Speculative decoding: the draft model's directory (a mapping's `draft:`); None: none.
    draft_path: str | None = None
    # Or prompt-lookup drafting (a mapping's `draft: prompt-lookup`); None: none.
    lookup: PromptLookup | None = None

    def cancel(self) -> None:
        """Ask the engine to stop this job at its next step (safe from any thread)."""
        self.cancelled.set()
