"""The MLX engine: the only code that imports mlx (lazily, on its own thread)."""

from .core import Engine, LoadedInfo
from .jobs import Chunk, Done, Failed, Job, PromptSpec

__all__ = ["Chunk", "Done", "Engine", "Failed", "Job", "LoadedInfo", "PromptSpec"]
