"""mlx-bridge: an Ollama-compatible server running MLX models in-process."""

__version__ = "0.1.0"
