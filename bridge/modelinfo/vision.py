"""Whether a model directory's config describes a vision-language model (no MLX, no weights)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_vision_config(config: Mapping[str, Any]) -> bool:
    """A `vision_config` section is how Hugging Face VLM configs (Qwen2/2.5-VL, Gemma 3, SmolVLM,
    LLaVA...) carry their vision tower; mlx-vlm loads them, and says so if it cannot."""
    return isinstance(config.get("vision_config"), Mapping) and bool(config.get("model_type"))
