"""bridge.errors: Unsupported is a 400 of its own, not a BadRequest (routing falls back on it)."""

from __future__ import annotations

import pytest

import bridge.errors
from bridge.errors import BadRequest, BridgeError, Unsupported
from bridge.routing.dispatch import FALLBACK_ERRORS


def test_unsupported_is_a_400_but_not_a_bad_request() -> None:
    exc = Unsupported("no tools here")
    assert isinstance(exc, BridgeError) and not isinstance(exc, BadRequest)
    assert (exc.status, exc.openai_type, exc.message) == (400, "invalid_request_error",
                                                           "no tools here")


def test_fallback_takes_unsupported_and_never_a_bad_request() -> None:
    assert isinstance(Unsupported("x"), FALLBACK_ERRORS)
    assert not isinstance(BadRequest("x"), FALLBACK_ERRORS)


def test_except_bad_request_does_not_swallow_unsupported() -> None:
    with pytest.raises(Unsupported):
        try:
            raise Unsupported("x")
        except BadRequest:  # a handler for malformed input must not eat "try another backend"
            pytest.fail("Unsupported caught as BadRequest")


def test_docstring_names_the_real_http_mapping() -> None:
    import bridge.http.web as web

    assert "bridge.http.web" in (bridge.errors.__doc__ or "")
    assert callable(web.handle_bridge_error) and callable(web.error_body)


def test_unsupported_answers_400_in_each_shape(app) -> None:
    """An Unsupported raised by the MLX side (images on a text model) is still a 400 everywhere."""
    client = app.test_client()
    image = "aGk="
    native = client.post("/api/generate", json={"model": "tiny", "prompt": "p", "images": [image],
                                                "stream": False})
    assert native.status_code == 400, native.data
    assert "does not support images" in native.get_json()["error"]
