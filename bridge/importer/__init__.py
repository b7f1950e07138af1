"""GGUF and Ollama-store models -> MLX model directories. Pure file work: no Flask, no engine."""

from bridge.importer.convert import QUANTIZE_CHOICES, convert_gguf, default_dtype
from bridge.importer.errors import ImportFailed
from bridge.importer.run import IMPORTED_DIR, ImportResult, import_model, resolve_source

__all__ = ["IMPORTED_DIR", "QUANTIZE_CHOICES", "ImportFailed", "ImportResult", "convert_gguf",
           "default_dtype", "import_model", "resolve_source"]
