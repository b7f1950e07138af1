"""Prompt tokens made on the request thread: each model's tokenizer, loaded once, and a size cut.

Rendering and tokenizing a prompt takes time in proportion to its length (a 32 MB prompt: half
a minute). On the engine thread that would stall every other client, so the request's own
thread does it (Hugging Face's fast tokenizers release the GIL while they encode) and hands the
engine the tokens (`PromptSpec.tokens`). Before tokenizing, the rendered text is cut to the part
that could possibly fit in the context window, so an oversized prompt costs no more than one
that fills the window. Only tokenizers are used here, never MLX.

This is an optimisation: when a tokenizer cannot be loaded here, the job goes without tokens
and the engine renders the prompt itself (and reports the load error as it always has).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from bridge.engine import PromptSpec
from bridge.engine.embed import input_tokens
from bridge.engine.models import Tokenizers
from bridge.engine.prompts import chat_prompt, chat_text, encode, generate_text, prompt_tokens
from bridge.errors import ModelLoadError

log = logging.getLogger(__name__)

# Recent chat transcripts kept per model (text -> the token ids the model actually saw).
MAX_TRANSCRIPTS = 64
# Normalizers may join characters (NFKC composes "e" + U+0301 into "é"): a token can cover more
# characters of the text than the length of its own string, but not twice as many.
_NORMALIZER_SLACK = 2


class _Slot:
    """One model's tokenizer; its own lock, so loading one model's never blocks another's."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.lock = threading.Lock()
        self.tokenizer: Any = None
        self.longest = 0  # characters in the longest token of the vocabulary (0: unknown)
        self.transcripts = Transcripts()


class PromptTokenizers:
    """Tokenizers for request threads, by model directory (least recently used dropped first)."""

    def __init__(self, max_models: int = 4, shared: Tokenizers | None = None) -> None:
        self.max_models = max(1, max_models)
        self.shared = shared or Tokenizers()  # the engine's: a model's tokenizer is loaded once
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    def tokens(self, path: str, digest: str, spec: PromptSpec, context: int) -> list[int] | None:
        """The prompt's tokens, cut to what can fill `context`; None if no tokenizer loads here.

        BridgeError (a template that rejects the messages, ids outside the vocabulary) is
        raised: the request is at fault, whichever thread finds it.
        """
        slot = self._ready(path, digest)
        if slot is None:
            return None
        max_chars = _window_chars(slot, context)
        if spec.messages is not None:
            text = chat_prompt(slot.tokenizer, spec)
            if max_chars is not None and len(text) > max_chars:  # cut: no whole turn to reuse
                return encode(slot.tokenizer, text[len(text) - max_chars:])
            spec.rendered = text
            return slot.transcripts.tokens(slot.tokenizer, text)
        return prompt_tokens(slot.tokenizer, spec, max_chars)

    def _ready(self, path: str, digest: str) -> _Slot | None:
        """The model's slot with its tokenizer loaded (loading it now), or None if it cannot
        be loaded here."""
        slot = self._slot(path, digest)
        with slot.lock:
            if slot.tokenizer is None and not _load(slot, path, self.shared):
                return None
        return slot

    def loaded(self, path: str, digest: str) -> Any:
        """The model's tokenizer if one is loaded here (None otherwise); loads nothing."""
        slot = self._slot(path, digest)
        with slot.lock:
            return slot.tokenizer

    def embed_tokens(self, path: str, digest: str, spec: PromptSpec,
                     context: int) -> list[list[int]] | None:
        """Each embedding input's tokens fitted to `context`, encoding no more of a huge input
        than the window can hold; None if no tokenizer loads here (the engine does it)."""
        assert spec.embed_inputs is not None
        slot = self._ready(path, digest)
        if slot is None:
            return None
        max_chars = _window_chars(slot, context)
        return [input_tokens(slot.tokenizer, text, context, spec.truncate, max_chars)
                for text in spec.embed_inputs]

    def render(self, path: str, digest: str, spec: PromptSpec) -> str:
        """The prompt text the model would be given (`_debug_render_only`), not tokenized."""
        slot = self._ready(path, digest)
        if slot is None:
            raise ModelLoadError(f"cannot load the tokenizer of {path}")
        if spec.messages is not None:
            return chat_prompt(slot.tokenizer, spec)
        return generate_text(slot.tokenizer, spec)

    def preload(self, path: str, digest: str) -> None:
        """Load a model's tokenizer and compile its chat template now (at a model load), so the
        first request does not pay for them; any failure is left for that request to report."""
        slot = self._ready(path, digest)
        if slot is None:
            return
        try:
            chat_text(slot.tokenizer, [{"role": "user", "content": "hi"}], None, None)
        except Exception as exc:  # noqa: BLE001 - a template that fails fails the request later
            log.info("chat template not precompiled path=%s error=%s", path, exc)

    def remember(self, path: str, text: str, ids: list[int], cut: int = 0) -> None:
        """A finished chat turn: `text` (prompt and answer) is exactly `ids` (what the model saw
        and generated), so the next turn, whose prompt starts with it, reuses those ids.

        `cut`: the answer's last tokens made an incomplete character, dropped from `text`; the
        turn is remembered without them (and the text they began), as far as `cut` answer ids go.
        """
        with self._lock:
            slot = self._slots.get(path)
        if slot is None:
            return
        if cut:
            kept = _whole_characters(slot.tokenizer, text, ids, cut)
            if kept is None:
                return
            text, ids = kept
        slot.transcripts.add(text, ids)

    def _slot(self, path: str, digest: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(path)
            if slot is None or slot.digest != digest:  # new, or its files changed
                slot = self._slots[path] = _Slot(digest)
            self._slots.move_to_end(path)
            while len(self._slots) > self.max_models:
                self._slots.popitem(last=False)
            return slot

    def forget(self, path: str) -> None:
        """The model was unloaded: its tokenizer (and transcripts) go too, memory and all."""
        with self._lock:
            self._slots.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()


def _whole_characters(tokenizer: Any, text: str, ids: list[int],
                      answer: int) -> tuple[str, list[int]] | None:
    """`text` and `ids` without the last tokens whose bytes made no whole character: the
    longest `ids[:-k]` (k ≤ 64, within the `answer`'s ids: a tail of stray bytes, each its own
    U+FFFD, goes whole) whose answer part decodes to the start of the text's answer, and the
    text cut to match; None when none does (a decoding that differs from the streamed text)."""
    if tokenizer is None:
        return None
    start = len(ids) - answer
    answer_at = len(text) - len(tokenizer.decode(ids[start:]).rstrip("\ufffd"))
    if answer_at < 0:
        return None
    for k in range(1, min(answer, 64) + 1):
        kept = tokenizer.decode(ids[start:len(ids) - k])
        if not kept.endswith("\ufffd") and text[answer_at:].startswith(kept):
            return text[:answer_at + len(kept)], ids[:len(ids) - k]
    return None


class Transcripts:
    """The token ids behind recent chat texts, so a growing chat keeps the ids it generated.

    Re-tokenizing an answer's text rarely gives back the ids the model sampled (SmolLM2 diverges
    after ~8 tokens), and the prompt (KV) cache is keyed by ids: without this, every turn would
    prefill the previous answer again. The ids of the longest remembered text the new prompt
    starts with are kept; only the rest is tokenized.
    """

    def __init__(self, max_entries: int = MAX_TRANSCRIPTS) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._texts: OrderedDict[str, list[int]] = OrderedDict()

    def add(self, text: str, ids: list[int]) -> None:
        if not text or not ids:
            return
        with self._lock:
            self._texts[text] = list(ids)
            self._texts.move_to_end(text)
            while len(self._texts) > self.max_entries:
                self._texts.popitem(last=False)

    def tokens(self, tokenizer: Any, text: str) -> list[int]:
        """`text` tokenized, its longest remembered prefix replaced by that prefix's ids."""
        with self._lock:
            best = max((t for t in self._texts if text.startswith(t)), key=len, default="")
            head = self._texts[best] if best else []
            if best:
                self._texts.move_to_end(best)
        if not best:
            return encode(tokenizer, text)
        rest = text[len(best):]
        return head + (list(tokenizer.encode(rest, add_special_tokens=False)) if rest else [])


def _window_chars(slot: _Slot, context: int) -> int | None:
    """More characters than `context` tokens can cover (None: the vocabulary is unknown)."""
    return _NORMALIZER_SLACK * (context + 2) * slot.longest if slot.longest else None


def _load(slot: _Slot, path: str, shared: Tokenizers) -> bool:
    try:
        tokenizer = shared.get(path)  # the engine's, when it has loaded the model
    except Exception as exc:  # corrupt files: the engine's load reports them to the client
        log.info("no request-side tokenizer path=%s error=%s: %s", path, type(exc).__name__, exc)
        return False
    slot.tokenizer, slot.longest = tokenizer, longest_token(tokenizer)
    return True


def longest_token(tokenizer: Any) -> int:
    """Characters in the vocabulary's longest token (byte-level vocabularies spell one byte
    per character, so this also bounds the text characters a token covers); 0 if unknown."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer behind it
    try:
        if backend is not None:  # one token string at a time: no 49k-entry dict to build
            size = backend.get_vocab_size(with_added_tokens=True)
            return max((len(backend.id_to_token(i) or "") for i in range(size)), default=0)
        return max((len(token) for token in tokenizer.get_vocab()), default=0)
    except Exception:  # a tokenizer without a readable vocabulary: no cut
        return 0
