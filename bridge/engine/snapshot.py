"""What request threads see of the resident models: a read-only copy the engine publishes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bridge.engine.models import FOREVER, ModelCache
from bridge.engine.prompt_cache import PromptCache


@dataclass
class LoadedInfo:
    """A read-only view of a resident model for /api/ps and /health."""

    key: str
    name: str
    size: int  # weights and the model's cached KV entries, in bytes
    context_length: int
    expires_at: float
    loaded_at: float
    active: int
    size_vram: int = 0  # of `size`, what sits in GPU memory (Metal: all of it; a CPU: none)


def loaded_infos(cache: ModelCache, prompts: PromptCache, device: str) -> list[LoadedInfo]:
    """The resident models as /api/ps shows them (engine thread: it reads the live cache)."""
    infos = []
    for m in cache.models.values():
        size = m.size + prompts.bytes_for(m.key)
        infos.append(LoadedInfo(m.key, m.name, size, m.context_length,
                                _in_use_expiry(m.keep_alive) if m.active else m.expires_at,
                                m.loaded_at, m.active,
                                size_vram=size if device == "gpu" else 0))
    return infos


def _in_use_expiry(keep_alive: float) -> float:
    """A model in use expires keep_alive after now (it is renewed when its jobs end)."""
    return FOREVER if keep_alive < 0 else time.time() + keep_alive
