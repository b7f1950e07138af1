"""Prompt (KV) cache: finished requests' caches, reused by prompts sharing a prefix.

Engine thread only.

Each model gets an mlx-lm `LRUPromptCache` (a token trie; a longer cached sequence is trimmed
to the shared prefix, so a growing chat and requests sharing a system prompt both hit). One
byte budget covers all models: the least recently used model gives entries back first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BYTES = 1 << 30
DEFAULT_ENTRIES = 32


class PromptCache:
    """KV caches per model key, bounded in bytes and entries, least recently used evicted first."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.max_bytes = max(0, max_bytes)
        self.max_entries = max(1, max_entries)
        self._models: dict[str, Any] = {}  # model key -> LRUPromptCache
        self._used: dict[str, float] = {}

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._models.values())

    def __len__(self) -> int:
        return sum(len(c) for c in self._models.values())

    def bytes_for(self, key: str) -> int:
        """What one model's cached KV entries hold."""
        lru = self._models.get(key)
        return lru.nbytes if lru is not None else 0

    def fetch(self, key: str, tokens: list[int]) -> tuple[list[Any] | None, int]:
        """A private copy of the nearest cache and the prompt tokens it covers (< len(tokens))."""
        lru = self._models.get(key)
        if lru is None or self.max_bytes == 0:
            return None, 0
        self._used[key] = time.monotonic()
        cache, rest = lru.fetch_nearest_cache(key, tokens)
        if cache is None:
            return None, 0
        if not rest:  # an exact hit: the last token must still run to produce logits
            from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        return cache, len(tokens) - len(rest)

    def insert(self, key: str, tokens: list[int], cache: list[Any]) -> None:
        """Keep the cache of a finished request (`tokens` are exactly what it holds)."""
        if self.max_bytes == 0 or not tokens:
            return
        import mlx.core as mx
        from mlx_lm.models.cache import LRUPromptCache

        # A cache extracted from a batch is a lazy slice of the whole batch's buffers:
        # materialize it, or the entry would keep those alive at a size nbytes does not show.
        mx.eval([c.state for c in cache])
        lru = self._models.get(key)
        if lru is None:
            lru = self._models[key] = LRUPromptCache(max_size=self.max_entries,
                                                     max_bytes=self.max_bytes)
        lru.insert_cache(key, list(tokens), cache)
        self._used[key] = time.monotonic()
        self._enforce()

    def _enforce(self) -> None:
        while self.nbytes > self.max_bytes:
            key = min((k for k, c in self._models.items() if len(c)), key=self._used.__getitem__)
            lru = self._models[key]
            lru.trim_to(n_sequences=len(lru) - 1)

    def drop(self, key: str) -> None:
        """Forget every cache of a model (it is being unloaded)."""
        lru = self._models.pop(key, None)
        self._used.pop(key, None)
        if lru is not None and len(lru):
            log.info("prompt cache dropped model_key=%s entries=%d bytes=%d", key, len(lru),
                     lru.nbytes)

    def clear(self) -> None:
        for key in list(self._models):
            self.drop(key)
