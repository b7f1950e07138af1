"""Per-token log-probabilities for the jobs that ask for them (engine thread only).

mlx-lm's decoders (generate_step, BatchGenerator) hand back, with every sampled token, the
log-softmax vector the sampler drew it from: the model's logits after the job's logits
processors (repetition/presence/frequency penalties, the structured-output mask) and before the
sampler's temperature, top-k, top-p and min-p. That vector is what is reported, so the values
are the ones the token was actually chosen from; a token the grammar masked out has
probability 0 and is never listed among the alternatives.
"""

from __future__ import annotations

import math
from typing import Any

from bridge.engine.jobs import TokenLogprob

# What a token of probability 0 reports instead of -inf (JSON has no infinities); OpenAI's value.
FLOOR = -9999.0


class LogprobScorer:
    """Scores one job's sampled tokens: the token's logprob plus its `top` most likely rivals."""

    def __init__(self, tokenizer: Any, detokenizer: Any, top: int) -> None:
        self.tokenizer, self.top = tokenizer, top
        self.piece = _piece_reader(tokenizer, detokenizer)

    def score(self, token: int, vector: Any) -> TokenLogprob:
        """`vector`: the log-softmax row the token was sampled from (an evaluated mx.array)."""
        import mlx.core as mx

        row = vector.reshape(-1).astype(mx.float32)
        rivals: tuple[TokenLogprob, ...] = ()
        if self.top > 0:
            k = min(self.top, row.shape[0])
            # O(vocab) selection of the k largest (unordered), then sort those k on the host.
            ids = mx.argpartition(-row, kth=k - 1)[:k]
            pairs = sorted(zip(ids.tolist(), row[ids].tolist(), strict=True),
                           key=lambda p: (-p[1], p[0]))
            rivals = tuple(self.entry(i, v) for i, v in pairs if math.isfinite(v))
        return self.entry(token, row[token].item(), rivals)

    def entry(self, token: int, logprob: float,
              top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
        raw = self.piece(token)
        return TokenLogprob(token=raw.decode("utf-8", "replace"), logprob=_finite(logprob),
                            bytes=list(raw), top=list(top))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else FLOOR


def _piece_reader(tokenizer: Any, detokenizer: Any) -> Any:
    """token id -> the token's own bytes (a byte-level piece may be part of a UTF-8 character).

    Read from the streaming detokenizer's table, the one that builds the response text.
    """
    table = getattr(detokenizer, "tokenmap", None)
    kind = type(detokenizer).__name__
    if table is not None and kind == "SPMStreamingDetokenizer":
        sep = "\u2581".encode()
        return lambda token: table[token].replace(sep, b" ") if token < len(table) else b""
    if table is not None and kind == "BPEStreamingDetokenizer":
        from mlx_lm.tokenizer_utils import _byte_decoder

        decoder = _byte_decoder()

        def bpe(token: int) -> bytes:
            piece = table[token] if token < len(table) else ""
            out = bytearray()
            for char in piece:  # added tokens (`<think>`) are plain text, as the detokenizer
                byte = decoder.get(char)
                out.extend(bytes([byte]) if byte is not None else char.encode())
            return bytes(out)

        return bpe
    return lambda token: tokenizer.decode([token]).encode()
