"""GGUF and Ollama-store models -> MLX model directories. Pure file work: no Flask, no engine.

The names below load on first use: the server imports `bridge.importer.hub` (pulls) at start,
and the converter's numpy would add ~0.15 s to every start and CLI command that never imports.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"QUANTIZE_CHOICES": "convert", "convert_gguf": "convert", "default_dtype": "convert",
          "ImportFailed": "errors", "IMPORTED_DIR": "run", "ImportResult": "run",
          "import_model": "run", "resolve_source": "run"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
