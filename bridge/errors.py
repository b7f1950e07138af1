"""One error hierarchy for the whole bridge; the HTTP mapping (status and the native, OpenAI or
Anthropic body) lives in `bridge.http.web` (`handle_bridge_error`, `error_body`)."""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Base error: carries the HTTP status and the message clients see as `{"error": ...}`."""

    status: int = 500
    openai_type: str = "api_error"
    # Machine-readable detail for the Anthropic shape's `error.details` (its SDK branches on
    # `details.error_code`); None for most errors.
    details: dict[str, Any] | None = None

    def __init__(self, message: str, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if details is not None:
            self.details = details


class BadRequest(BridgeError):
    """The request is malformed or names something impossible (400)."""

    status = 400
    openai_type = "invalid_request_error"


class Unsupported(BridgeError):
    """The model cannot do what was asked (tools, thinking, images...): another backend may.

    A 400 like BadRequest but not one: routing falls back to the next target on it
    (bridge.routing.dispatch.FALLBACK_ERRORS) and never on a BadRequest, a fault of the request.
    """

    status = 400
    openai_type = "invalid_request_error"


class Unauthorized(BridgeError):
    status = 401
    openai_type = "authentication_error"


class Forbidden(BridgeError):
    status = 403
    openai_type = "permission_error"


class NotFound(BridgeError):
    status = 404
    openai_type = "not_found_error"


class ModelNotFound(NotFound):
    """`model 'x' not found` — the wording Continue's regex relies on (`text`: an endpoint's own
    words, bridge.routing.refusals.not_found_text)."""

    def __init__(self, name: str, hint: str = "", text: str | None = None) -> None:
        super().__init__((text or f"model '{name}' not found") + hint)
        self.name = name


class Conflict(BridgeError):
    """The write would duplicate an existing resource (409)."""

    status = 409
    openai_type = "invalid_request_error"


class PayloadTooLarge(BridgeError):
    status = 413
    openai_type = "invalid_request_error"


class Unprocessable(BridgeError):
    status = 422
    openai_type = "invalid_request_error"


class TooManyRequests(BridgeError):
    """An API key went over one of its limits (429); `retry_after` whole seconds until it may
    try again, sent as the `Retry-After` header (bridge/http/auth.py)."""

    status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class ClientClosed(BridgeError):
    status = 499
    openai_type = "api_error"


class EngineError(BridgeError):
    """MLX failed to load or run a model (500)."""

    status = 500


class ModelLoadError(EngineError):
    """The weights could not be loaded (missing, corrupt, unsupported architecture)."""


class EngineUnavailable(EngineError):
    """The MLX engine is restarting after a crash, or could not be restarted (503).

    An EngineError, so an `auto` model falls back to its upstream meanwhile.
    """

    status = 503


class UpstreamError(BridgeError):
    """The upstream Ollama is unreachable or failed (502)."""

    status = 502


class ServerBusy(BridgeError):
    status = 503
    openai_type = "api_error"

    def __init__(self, message: str = "server busy, please try again.  "
                 "maximum pending requests exceeded") -> None:
        super().__init__(message)


class StoreUnavailable(BridgeError):
    """The SQLite state database is locked, corrupt or unreadable (503)."""

    status = 503


class ShuttingDown(BridgeError):
    status = 503

    def __init__(self, message: str = "server is shutting down") -> None:
        super().__init__(message)


class UpstreamNotRunning(NotFound):
    """A name nothing here serves while the upstream Ollama refuses connections: Ollama's 404.

    Not a 502: the OpenAI SDK retries 5xx answers, and clients that pull a model on a 404
    (`ollama run`) would never try.
    """
