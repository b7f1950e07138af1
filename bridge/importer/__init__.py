"""GGUF and Ollama-store models -> MLX model directories. Pure file work: no Flask, no engine."""

from .convert import QUANTIZE_CHOICES, convert_gguf, default_dtype
from .errors import ImportFailed
from .run import IMPORTED_DIR, ImportResult, import_model, resolve_source

__all__ = ["IMPORTED_DIR", "QUANTIZE_CHOICES", "ImportFailed", "ImportResult", "convert_gguf",
           "default_dtype", "import_model", "resolve_source"]
