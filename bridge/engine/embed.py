"""Embedding jobs: tokenize, forward through the backbone, mean-pool. Engine thread only."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import BadRequest, ClientClosed, Unsupported
from .jobs import Embedded, Job
from .models import LoadedModel

log = logging.getLogger(__name__)


def backbone(model: Any) -> Any:
    """The module that returns the final normed hidden states (mlx-lm's `model.model`)."""
    for owner in (model, getattr(model, "language_model", None)):
        inner = getattr(owner, "model", None)
        if inner is not None and callable(inner) and hasattr(inner, "embed_tokens"):
            return inner
    raise Unsupported(f"{type(model).__module__} models do not support embeddings on the MLX backend")


def input_tokens(tokenizer: Any, text: str, context: int, truncate: bool) -> list[int]:
    """The tokens of one input as the tokenizer encodes it (BOS included), fitted to the context."""
    tokens = list(tokenizer.encode(text))
    if not tokens:  # "" with a tokenizer that adds no BOS: pool over one special token instead
        special = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        tokens = [int(special or 0)]
    if len(tokens) > context:
        if not truncate:
            raise BadRequest("the input length exceeds the context length")
        tokens = tokens[:context]  # Ollama keeps the start of an embedding input
    return tokens


def embed(job: Job, loaded: LoadedModel, load_ns: int) -> Embedded:
    """Mean-pooled final hidden states, one raw (unnormalised) vector per input, in order."""
    import mlx.core as mx

    assert job.spec is not None and job.spec.embed_inputs is not None
    net = backbone(loaded.model)
    context = job.options.context(loaded.context_length)
    batch = [input_tokens(loaded.tokenizer, t, context, job.spec.truncate) for t in job.spec.embed_inputs]
    started = time.perf_counter_ns()
    vectors: list[list[float]] = []
    for tokens in batch:  # one at a time: no padding, so a batch equals its single inputs
        if job.cancelled.is_set():
            raise ClientClosed("request canceled")
        hidden = net(mx.array([tokens]))
        pooled = mx.mean(hidden[0].astype(mx.float32), axis=0)
        vectors.append(pooled.tolist())
    count = sum(len(t) for t in batch)
    log.info("embedded request_id=%s model=%s inputs=%d tokens=%d ms=%.1f", job.request_id,
             job.model_name, len(batch), count, (time.perf_counter_ns() - started) / 1e6)
    return Embedded(vectors=vectors, prompt_eval_count=count, load_duration=load_ns)
