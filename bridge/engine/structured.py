"""Structured output: `format` ("json" or a JSON schema) enforced by constrained decoding.

`json_grammar` turns the format into a grammar with Ollama's semantics; llguidance gives, at every
step, the set of tokens that keep the output a valid prefix; everything else gets -inf before
sampling. Once nothing can follow (the root object closed) only EOS is allowed, so a finished
value ends the generation. A `num_predict` or context limit that cuts the value short still ends
it (done_reason "length"), as in Ollama.

The grammar is compiled and checked on the request thread (a bad schema is a 400 before any
work); the per-tokenizer tables and the matcher live on the engine thread.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from bridge.engine.json_grammar import lark_for
from bridge.errors import BadRequest, Unsupported

log = logging.getLogger(__name__)


def grammar_for(fmt: str | dict[str, Any]) -> str:
    """The llguidance grammar for a request's `format`; BadRequest/Unsupported when unusable.

    The schema goes through `json_grammar` (Ollama's semantics: no extra keys unless asked for,
    fixed key order, 16-digit numbers, bounded whitespace), not llguidance's JSON compiler.
    """
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_lark(lark_for(fmt))
    try:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    except BaseException as exc:  # a Rust panic (pyo3's PanicException is a BaseException)
        if type(exc).__name__ != "PanicException":
            raise
        log.warning("llguidance panicked on a grammar error=%r", str(exc)[:300])
        raise BadRequest("format: this JSON schema cannot be compiled") from None
    if is_error:  # what llguidance refuses inside a `%json` leaf (e.g. look-around in `pattern`)
        raise Unsupported(f"format: this JSON schema cannot be enforced: {messages[0]}")
    return grammar


class TokenizerTables:
    """llguidance's view of each loaded tokenizer, built once per tokenizer (engine thread)."""

    def __init__(self) -> None:
        self._tables: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, tokenizer: Any) -> Any:
        with self._lock:
            table = self._tables.get(tokenizer)
            if table is None:
                table = self._tables[tokenizer] = _ll_tokenizer(tokenizer)
            return table


def _ll_tokenizer(tokenizer: Any) -> Any:
    """An LLTokenizer from the Rust `tokenizers` object behind the Hugging Face tokenizer."""
    import llguidance

    backend = getattr(getattr(tokenizer, "_tokenizer", tokenizer), "backend_tokenizer", None)
    if backend is None:
        raise Unsupported("format: structured output needs a fast (tokenizers) tokenizer")
    if backend.padding is not None or backend.truncation is not None:
        # llguidance needs both off: turn them off on a copy (the engine's stays as it is).
        # A copy costs seconds for a 262k-token vocabulary, so only when one is on.
        backend = backend.__class__.from_str(backend.to_str())
        backend.no_padding()
        backend.no_truncation()
    eos = sorted(tokenizer.eos_token_ids)
    return llguidance.LLTokenizer(backend.to_str(), n_vocab=len(tokenizer), eos_token=eos)


class Constraint:
    """The grammar's token mask for one job; fed the tokens the job samples (engine thread)."""

    def __init__(self, tables: TokenizerTables, tokenizer: Any, grammar: str) -> None:
        import llguidance

        self.lltok = tables.get(tokenizer)
        self.matcher = llguidance.LLMatcher(self.lltok, grammar)
        if self.matcher.is_error():
            raise BadRequest(f"format: {self.matcher.get_error()}")
        self.eos = sorted(tokenizer.eos_token_ids)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            log.warning("constrained token rejected token=%d error=%s", token,
                        self.matcher.get_error())

    def allowed(self, width: int) -> Any:
        """A boolean numpy row over the logits: the tokens the grammar allows next."""
        import numpy as np

        allowed = np.zeros(width, dtype=bool)
        if self.matcher.is_error():
            allowed[[e for e in self.eos if e < width]] = True  # cannot go on: end here
            return allowed
        # The mask includes EOS wherever the value may end, and only EOS once nothing can
        # follow (an object's closing brace: the root takes no trailing whitespace).
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8),
                             bitorder="little")
        n = min(width, self.lltok.vocab_size)
        allowed[:n] = bits[:n].astype(bool)
        return allowed


def mask(logits: Any, allowed: Any) -> Any:
    """Logits with every disallowed token at -inf (MLX arrays; engine thread)."""
    import mlx.core as mx

    return mx.where(mx.array(allowed), logits, float("-inf"))
