"""Embedding jobs: tokenize, forward through the backbone, mean-pool. Engine thread only.

An embedding job is computed a slice at a time (`EmbedTask.step`), so the engine can decode
running chats in between: a large request delays a stream by one slice, never by all of it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from bridge.engine.jobs import Embedded, Failed, Job
from bridge.engine.models import LoadedModel
from bridge.engine.prepare import as_bridge_error
from bridge.errors import BadRequest, BridgeError, ClientClosed, Unsupported

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.05  # one turn of embedding work; the engine then decodes for as long
CHUNK_TOKENS = 512  # a longer input is forwarded in pieces of this size (one unit of work each)


def backbone(model: Any) -> Any:
    """The module that returns the final normed hidden states (mlx-lm's `model.model`)."""
    for owner in (model, getattr(model, "language_model", None)):
        inner = getattr(owner, "model", None)
        if inner is not None and callable(inner) and hasattr(inner, "embed_tokens"):
            return inner
    raise Unsupported(f"{type(model).__module__} models do not support embeddings "
                      "on the MLX backend")


def input_tokens(tokenizer: Any, text: str, context: int, truncate: bool,
                 max_chars: int | None = None) -> list[int]:
    """The tokens of one input as the tokenizer encodes it (BOS included), fitted to the context.

    `max_chars`: more characters than `context` tokens can cover (bridge/serving/prompting.py):
    only that start of the text is encoded, so a huge input costs no more than a full window.
    """
    if max_chars is not None and len(text) > max_chars:
        if not truncate:
            raise BadRequest("the input length exceeds the context length")
        text = text[:max_chars]
    tokens = list(tokenizer.encode(text))
    if not tokens:  # "" with a tokenizer that adds no BOS: pool over one special token instead
        special = (tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                   else tokenizer.eos_token_id)
        tokens = [int(special or 0)]
    if len(tokens) > context:
        if not truncate:
            raise BadRequest("the input length exceeds the context length")
        tokens = tokens[:context]  # Ollama keeps the start of an embedding input
    return tokens


class EmbedTask:
    """One embedding job: every input tokenized, then forwarded one at a time, in slices."""

    def __init__(self, job: Job, loaded: LoadedModel, load_ns: int, max_tokens: int) -> None:
        assert job.spec is not None and job.spec.embed_inputs is not None
        self.job, self.loaded, self.load_ns, self.max_tokens = job, loaded, load_ns, max_tokens
        self.net = backbone(loaded.model)
        self.context = job.options.context(loaded.context_length)
        self.texts, self.truncate = job.spec.embed_inputs, job.spec.truncate
        self.batch: list[list[int]] = []  # tokens of the inputs tokenized so far
        self.count = 0
        for tokens in job.spec.embed_tokens or []:  # made on the request thread
            self._add(tokens)
        self.vectors: list[list[float]] = []
        self._long: tuple[Any, Any, int] | None = None  # (KV cache, hidden-state sum, tokens done)
        self.started = time.perf_counter_ns()

    def step(self, budget: float = SLICE_SECONDS) -> Embedded | None:
        """Work for about `budget` seconds (at least one unit); the result once all is done."""
        if self.job.cancelled.is_set():
            raise ClientClosed("request canceled")
        deadline = time.perf_counter() + budget
        while True:
            if len(self.batch) < len(self.texts):
                self._tokenize_next()
            elif len(self.vectors) < len(self.batch):
                self._forward_next()
            else:
                return self._result()
            if time.perf_counter() >= deadline:
                return None

    def _tokenize_next(self) -> None:
        self._add(input_tokens(self.loaded.tokenizer, self.texts[len(self.batch)], self.context,
                               self.truncate))

    def _add(self, tokens: list[int]) -> None:
        self.batch.append(tokens)
        self.count += len(tokens)
        if len(self.batch) == len(self.texts) and self.count > self.max_tokens:
            raise BadRequest(f"too many tokens: {self.count} (the limit is {self.max_tokens} "
                             "per request; "
                             "MLX_BRIDGE_MAX_EMBED_TOKENS)")

    def _forward_next(self) -> None:
        """One input, or the next piece of a long one; one at a time: no padding, so a batch
        equals its single inputs."""
        import mlx.core as mx

        tokens = self.batch[len(self.vectors)]
        if len(tokens) <= CHUNK_TOKENS:
            hidden = self.net(mx.array([tokens]))
            self.vectors.append(mx.mean(hidden[0].astype(mx.float32), axis=0).tolist())
            return
        if self._long is None:
            from mlx_lm.models.cache import make_prompt_cache

            self._long = (make_prompt_cache(self.loaded.model), mx.zeros((0,)), 0)
        cache, total, done = self._long
        piece = tokens[done:done + CHUNK_TOKENS]
        hidden = self.net(mx.array([piece]), cache=cache)  # attends to the pieces before it
        part = mx.sum(hidden[0].astype(mx.float32), axis=0)
        total = part if done == 0 else total + part
        mx.eval(total)
        done += len(piece)
        if done < len(tokens):
            self._long = (cache, total, done)
            return
        self._long = None
        self.vectors.append((total / len(tokens)).tolist())

    def _result(self) -> Embedded:
        log.info("embedded request_id=%s model=%s inputs=%d tokens=%d ms=%.1f", self.job.request_id,
                 self.job.model_name, len(self.batch), self.count,
                 (time.perf_counter_ns() - self.started) / 1e6)
        return Embedded(vectors=self.vectors, prompt_eval_count=self.count,
                        load_duration=self.load_ns)


class EmbedQueue:
    """Embedding jobs, oldest first, taking turns with decoding: one slice per turn, and only
    once decoding has had as long as the last slice took (a large request delays a stream by
    one slice, never by all of it)."""

    def __init__(self) -> None:
        self.tasks: deque[EmbedTask] = deque()
        self._spent = 0.0  # how long the last slice took ...
        self._ended = 0.0  # ... and when it ended

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[EmbedTask]:
        return iter(self.tasks)

    def append(self, task: EmbedTask) -> None:
        self.tasks.append(task)

    def popleft(self) -> EmbedTask:
        return self.tasks.popleft()

    def turn(self, decoding: bool) -> tuple[EmbedTask, Embedded | Failed] | None:
        """One slice of the oldest job, if it is embedding's turn; the job and its result
        once it is finished (or failed)."""
        if not self.tasks or (decoding and time.perf_counter() - self._ended < self._spent):
            return None
        task = self.tasks.popleft()
        began = time.perf_counter()
        result: Embedded | Failed | None
        try:
            result = task.step()
        except Exception as exc:
            if not isinstance(exc, BridgeError):
                log.exception("embedding failed request_id=%s model=%s", task.job.request_id,
                              task.job.model_name)
            result = Failed(as_bridge_error(exc))
        self._ended = time.perf_counter()
        self._spent = self._ended - began
        if result is None:
            self.tasks.append(task)  # several embedding jobs take turns too
            return None
        return task, result
