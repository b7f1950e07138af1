"""Whether a model directory's config describes a vision-language model (no MLX, no weights)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge.modelinfo.tokenizer import chat_template, read_json


def is_vision_config(config: Mapping[str, Any]) -> bool:
    """A `vision_config` section is how Hugging Face VLM configs (Qwen2/2.5-VL, Gemma 3, SmolVLM,
    LLaVA...) carry their vision tower; mlx-vlm loads them, and says so if it cannot."""
    return isinstance(config.get("vision_config"), Mapping) and bool(config.get("model_type"))


def adopt_chat_template(tokenizer: Any, root: Path) -> None:
    """Give a tokenizer without a chat template the one the directory ships elsewhere.

    Vision checkpoints often keep the template only in the processor's chat_template.json,
    which a tokenizer loader does not read: the prompt would then be rendered without it
    (while /api/show reports it). `chat_template()` is what /api/show reads, so the prompt and
    the description agree.
    """
    if getattr(tokenizer, "chat_template", None):
        return
    template = chat_template(root, read_json(root / "tokenizer_config.json"))
    if template:
        tokenizer.chat_template = template  # mlx-lm's wrapper forwards both to the HF tokenizer
        tokenizer.has_chat_template = True
