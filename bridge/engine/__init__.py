"""The MLX engine: the only code that imports mlx (lazily, on its own thread)."""

from .core import Engine, LoadedInfo
from .jobs import Chunk, Done, Embedded, Failed, Job, PromptSpec

__all__ = ["Chunk", "Done", "Embedded", "Engine", "Failed", "Job", "LoadedInfo", "PromptSpec"]
