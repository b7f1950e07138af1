"""Request size limits over HTTP: the body cap (413 before the body is read), the app's `Limits`.

The body cap is Flask's MAX_CONTENT_LENGTH: a declared Content-Length above it is refused before
any byte of the body is read, and a chunked body is cut off as soon as it passes the cap. Blob
uploads (`/api/blobs/...`, whole model files streamed to the upstream Ollama) are exempt. The caps
on messages, images and embedding inputs are checked by bridge.wire.limits, given `active()`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, has_app_context, request
from werkzeug.exceptions import RequestEntityTooLarge

from bridge.errors import BadRequest, PayloadTooLarge
from bridge.state import KEY, bridge, bridge_of
from bridge.wire import limits as caps
from bridge.wire.limits import Limits

UNCAPPED_PREFIXES = ("/api/blobs/",)
NO_CAP = 1 << 62  # Flask reads None as "use MAX_CONTENT_LENGTH"


def active() -> Limits:
    """The serving app's limits; the defaults outside an app (pure parsing in tests)."""
    if has_app_context():
        state = current_app.extensions.get(KEY)  # absent in a bare Flask app
        if state is not None:
            return bridge().limits
    return Limits()


def check_embed_inputs(count: int) -> None:
    """The serving app's cap on the inputs of one embedding request."""
    caps.check_embed_inputs(count, active())


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


def zstd_aware_body() -> bytes:
    """The body, decompressed when it came `Content-Encoding: zstd` (the Responses API accepts
    such bodies, as Ollama's does: Codex compresses its requests); the decompressed size has
    the same cap as a plain body, so a small bomb cannot expand into the server's memory."""
    raw = request.get_data()
    if request.headers.get("Content-Encoding", "").strip().lower() != "zstd":
        return raw
    import zstandard  # only for the rare compressed request

    cap = active().max_body
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        body = reader.read(cap + 1)
        while len(body) <= cap and (more := reader.read(cap + 1 - len(body))):
            body += more
    except zstandard.ZstdError:
        raise BadRequest("failed to decompress zstd body") from None
    if len(body) > cap:
        raise PayloadTooLarge(f"request body too large: more than {cap} bytes decompressed "
                              f"(the limit is {cap} bytes; MLX_BRIDGE_MAX_BODY)")
    return body


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
