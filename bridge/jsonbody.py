"""Strict JSON body decoding with Go-decoder-style error texts (Ollama's wording)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from .errors import BadRequest

_JSON_TYPE = {str: "string", bool: "bool", int: "number", float: "number", list: "array", dict: "object"}


def json_type(value: Any) -> str:
    """The JSON type name Go's decoder reports for a value."""
    if value is None:
        return "null"
    return _JSON_TYPE.get(type(value), "value")


def parse_body(raw: bytes, struct: str) -> dict[str, Any]:
    """Decode a request body into a JSON object or raise 400 in Ollama's wording."""
    if not raw or not raw.strip():
        raise BadRequest("missing request body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid UTF-8 in request body at byte {exc.start}") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"json: cannot unmarshal {json_type(body)} into Go value of type api.{struct}")
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def type_error(struct: str, field: str, value: Any, gotype: str) -> BadRequest:
    """Go's `cannot unmarshal` text for a wrongly typed field."""
    return BadRequest(
        f"json: cannot unmarshal {json_type(value)} into Go struct field {struct}.{field} of type {gotype}"
    )


class Fields:
    """Typed, strict access to the fields of one decoded request object."""

    def __init__(self, body: dict[str, Any], struct: str) -> None:
        self.body = body
        self.struct = struct

    def _get(self, name: str, ok: Callable[[Any], bool], gotype: str, default: Any) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if not ok(value):
            raise type_error(self.struct, name, value, gotype)
        return value

    def str(self, name: str, default: str = "") -> str:
        return self._get(name, lambda v: isinstance(v, str), "string", default)

    def bool(self, name: str, default: bool | None = None) -> bool | None:
        return self._get(name, lambda v: isinstance(v, bool), "bool", default)

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self._get(name, _is_integral, "int", default)
        return int(value) if value is not None else None

    def number(self, name: str, default: float | None = None) -> float | None:
        return self._get(name, _is_number, "float64", default)

    def list(self, name: str, gotype: str) -> list[Any]:
        return self._get(name, lambda v: isinstance(v, list), gotype, [])

    def dict(self, name: str, gotype: str = "map[string]interface {}") -> dict[str, Any]:
        return self._get(name, lambda v: isinstance(v, dict), gotype, {})

    def raw(self, name: str) -> Any:
        return self.body.get(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integral(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()
