"""Request size limits: the body cap (413 before the body is read) and caps on messages and images.

The body cap is Flask's MAX_CONTENT_LENGTH: a declared Content-Length above it is refused before
any byte of the body is read, and a chunked body is cut off as soon as it passes the cap. Blob
uploads (`/api/blobs/...`, whole model files streamed to the upstream Ollama) are exempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, has_app_context, request
from werkzeug.exceptions import RequestEntityTooLarge

from bridge.config import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_EMBED_INPUTS,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_MESSAGES,
    Config,
)
from bridge.errors import BadRequest, PayloadTooLarge
from bridge.state import KEY, bridge, bridge_of

UNCAPPED_PREFIXES = ("/api/blobs/",)
NO_CAP = 1 << 62  # Flask reads None as "use MAX_CONTENT_LENGTH"
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
        return cls(config.max_body, config.max_messages, config.max_images, config.max_image_bytes,
                   config.max_embed_inputs)


def active() -> Limits:
    """The serving app's limits; the defaults outside an app (pure parsing in tests)."""
    if has_app_context():
        state = current_app.extensions.get(KEY)  # absent in a bare Flask app
        if state is not None:
            return bridge().limits
    return Limits()


def check_messages(count: int) -> None:
    cap = active().max_messages
    if count > cap:
        raise BadRequest(f"too many messages: {count} (the limit is {cap}; "
                         "MLX_BRIDGE_MAX_MESSAGES)")


def check_embed_inputs(count: int) -> None:
    """Inputs of one embedding request the MLX engine computes (the token cap is the engine's)."""
    cap = active().max_embed_inputs
    if count > cap:
        raise BadRequest(f"too many inputs: {count} (the limit is {cap} per request; "
                         "MLX_BRIDGE_MAX_EMBED_INPUTS)")


def check_images(images: list[Any], where: str, seen: int = 0) -> int:
    """Validate base64 images (Go's decoder texts) and the caps; returns the running count."""
    limits = active()
    total = seen + len(images)
    if total > limits.max_images:
        raise BadRequest(f"too many images: {total} (the limit is {limits.max_images} per request; "
                         "MLX_BRIDGE_MAX_IMAGES)")
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


def _refuse(length: int | None) -> PayloadTooLarge:
    cap = active().max_body
    size = f"{length} bytes" if length is not None else f"more than {cap} bytes"
    return PayloadTooLarge(f"request body too large: {size} (the limit is {cap} bytes; "
                           "MLX_BRIDGE_MAX_BODY)")


def check_length() -> None:
    """before_request: refuse an oversized body before reading it; lift the cap for blobs."""
    if request.path.startswith(UNCAPPED_PREFIXES):
        request.max_content_length = NO_CAP
        return
    cap = active().max_body
    length = request.content_length
    if length is not None:
        if length > cap:
            raise _refuse(length)
        return
    if request.environ.get("wsgi.input_terminated"):
        # Chunked: werkzeug stops silently AT the cap (a cut body would read as bad JSON), so
        # read at most one byte more here, once; handlers get the cached bytes.
        request.max_content_length = cap + 1
        if len(request.get_data(cache=True)) > cap:
            raise _refuse(None)


def too_large(exc: RequestEntityTooLarge) -> Any:
    """A chunked body that grew past the cap while being read: same answer as a declared one."""
    from bridge.http.web import (
        handle_bridge_error,  # web installs these hooks: import late, no cycle
    )

    return handle_bridge_error(_refuse(request.content_length))


def install(app: Flask) -> None:
    """Register the size checks (the Limits themselves are `bridge().limits`)."""
    app.config["MAX_CONTENT_LENGTH"] = bridge_of(app).limits.max_body
    app.before_request(check_length)
    app.register_error_handler(RequestEntityTooLarge, too_large)
