"""The MLX engine: the only code that imports mlx (lazily, on its own thread)."""

from bridge.engine.core import Engine
from bridge.engine.jobs import Chunk, Done, Embedded, Failed, Job, PromptSpec
from bridge.engine.snapshot import LoadedInfo

__all__ = ["Chunk", "Done", "Embedded", "Engine", "Failed", "Job", "LoadedInfo", "PromptSpec"]
