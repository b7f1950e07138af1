"""Request caps as plain values, and the checks a parsed body must pass (no Flask here).

The serving app builds one `Limits` from its config (bridge.http.limits.install) and the
handlers pass it to the parsers in bridge.wire.schemas; `Limits()` holds the defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bridge.config import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_EMBED_INPUTS,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_MESSAGES,
    Config,
)
from bridge.errors import BadRequest

# Go decodes []byte fields with base64.StdEncoding (padding required; CR and LF skipped).
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_CHAR = re.compile(r"[^A-Za-z0-9+/=]")
_EARLY_PADDING = re.compile(r"=+[^=]")


@dataclass(frozen=True)
class Limits:
    """The caps one app enforces."""

    max_body: int = DEFAULT_MAX_BODY
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_embed_inputs: int = DEFAULT_MAX_EMBED_INPUTS

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(config.max_body, config.max_messages, config.max_images,
                   config.max_image_bytes, config.max_embed_inputs)


def check_messages(count: int, limits: Limits) -> None:
    cap = limits.max_messages
    if count > cap:
        raise BadRequest(f"too many messages: {count} (the limit is {cap}; "
                         "MLX_BRIDGE_MAX_MESSAGES)")


def check_embed_inputs(count: int, limits: Limits) -> None:
    """Inputs of one embedding request the MLX engine computes (the token cap is the engine's)."""
    cap = limits.max_embed_inputs
    if count > cap:
        raise BadRequest(f"too many inputs: {count} (the limit is {cap} per request; "
                         "MLX_BRIDGE_MAX_EMBED_INPUTS)")


def check_images(images: list[Any], where: str, limits: Limits, seen: int = 0) -> int:
    """Validate base64 images (Go's decoder texts) and the caps; returns the running count."""
    total = seen + len(images)
    if total > limits.max_images:
        raise BadRequest(f"too many images: {total} (the limit is {limits.max_images} per "
                         "request; MLX_BRIDGE_MAX_IMAGES)")
    for i, image in enumerate(images):
        size = image_bytes(image)
        if size > limits.max_image_bytes:
            raise BadRequest(f"image too large: {where}[{i}] is {size} bytes (the limit is "
                             f"{limits.max_image_bytes}; MLX_BRIDGE_MAX_IMAGE_BYTES)")
    return total


def image_bytes(data: str) -> int:
    """The decoded size of a base64 image; BadRequest in Go's words when it is not base64."""
    text = data.replace("\r", "").replace("\n", "") if ("\r" in data or "\n" in data) else data
    if not _BASE64.fullmatch(text) or len(text) % 4:
        bad = _BASE64_CHAR.search(text) or _EARLY_PADDING.search(text)
        at = bad.start() if bad else len(text) // 4 * 4
        raise BadRequest(f"illegal base64 data at input byte {at}")
    return len(text) // 4 * 3 - text.count("=")
