"""bridge.wire is pure: no Flask, the caps come in as a `Limits` value, not from current_app."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.errors import BadRequest
from bridge.wire.limits import Limits
from bridge.wire.schemas import parse_chat, parse_generate

IMPORT_ALL = """
import importlib, pkgutil, sys
import bridge.wire
for m in pkgutil.iter_modules(bridge.wire.__path__):
    importlib.import_module("bridge.wire." + m.name)
print(sorted(k for k in sys.modules if k.split(".")[0] in ("flask", "werkzeug", "bridge")
             and (k.split(".")[0] != "bridge" or k.startswith(("bridge.http", "bridge.app")))))
"""


def test_wire_imports_no_flask_and_no_http_layer() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def _chat(n_messages: int) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}] * n_messages}


def test_parse_chat_uses_the_limits_it_is_given() -> None:
    assert len(parse_chat(_chat(3), Limits(max_messages=3)).messages) == 3
    with pytest.raises(BadRequest, match="too many messages: 3 \\(the limit is 2"):
        parse_chat(_chat(3), Limits(max_messages=2))


def test_parse_chat_ignores_the_app_context(app) -> None:
    """Inside a serving app (default caps) the caps passed in still decide."""
    with app.app_context(), pytest.raises(BadRequest, match="too many messages"):
        parse_chat(_chat(2), Limits(max_messages=1))


def test_parse_generate_image_caps_come_from_limits() -> None:
    body = {"model": "m", "prompt": "p", "images": ["aGk="]}  # 2 bytes decoded
    assert parse_generate(body, Limits(max_image_bytes=2)).images == ["aGk="]
    with pytest.raises(BadRequest, match="image too large"):
        parse_generate(body, Limits(max_image_bytes=1))
    with pytest.raises(BadRequest, match="too many images"):
        parse_generate(body, Limits(max_images=0))
