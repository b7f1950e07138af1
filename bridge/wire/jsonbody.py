"""Strict JSON body decoding with Go-decoder-style error texts (Ollama's wording)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from bridge.errors import BadRequest

# A `\uD800`-`\uDFFF` escape: only these can leave lone surrogates in decoded strings.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

_JSON_TYPE = {str: "string", bool: "bool", int: "number", float: "number", list: "array",
              dict: "object"}


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
    if text.startswith("\ufeff"):  # Go reads a BOM's first byte as a stray character
        raise BadRequest("invalid character 'ï' looking for beginning of value")
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float,
                          parse_int=_parse_int)
    except _GoDecodeError as exc:
        raise BadRequest(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(_go_syntax_error(exc)) from None
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    except RecursionError:  # deeper than Python's stack allows (Go's decoder stops at 10000)
        raise BadRequest("invalid JSON: exceeded max depth") from None
    if _SURROGATE_ESCAPE.search(text):
        body = _replace_lone_surrogates(body)
    if not isinstance(body, dict):
        raise BadRequest(f"json: cannot unmarshal {json_type(body)} into Go value of type "
                         f"api.{struct}")
    return body


def _parse_int(text: str) -> int | float:
    """An integer literal; past Python's 4,300-digit limit a float (inf, as Go's float64 reads
    it), so such a number in a field nobody reads is ignored, as Go ignores it."""
    return int(text) if len(text) <= 4000 else float(text)


def _reject_constant(name: str) -> Any:
    if name.startswith("-"):  # -Infinity
        raise _GoDecodeError(f"invalid character '{name[1]}' in numeric literal")
    raise _GoDecodeError(f"invalid character '{name[0]}' looking for beginning of value")


# Python's decoder messages -> what Go's scanner says at the same offending character
_GO_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes":
        "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Extra data": "after top-level value",
    "Invalid control character at": "in string literal",
}


def _go_syntax_error(exc: json.JSONDecodeError) -> str:
    """Go's `encoding/json` wording for a syntax error (Ollama returns it verbatim)."""
    if exc.msg.startswith("Unterminated string") or (
            exc.pos >= len(exc.doc.rstrip()) and exc.msg != "Extra data"):
        return "unexpected end of JSON input"
    where = _GO_SYNTAX.get(exc.msg)
    if where is None:
        return f"invalid JSON: {exc}"
    return f"invalid character {_go_quote_char(exc.doc[exc.pos])} {where}"


def _go_quote_char(ch: str) -> str:
    """Go's `quoteChar`: 'x', with escapes for quotes and non-printables."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    if ch.isprintable():
        return f"'{ch}'"
    code = ord(ch)
    return f"'\\x{code:02x}'" if code < 0x80 else f"'\\u{code:04x}'"


class _GoDecodeError(ValueError):
    """Raised from decoder hooks with Go's exact text."""


def _parse_float(text: str) -> float:
    """Go's decoder rejects numbers that overflow a float64 (Python would make them inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise _GoDecodeError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _replace_lone_surrogates(body: Any) -> Any:
    """Unpaired `\\uD800`-style escapes become U+FFFD, as Go's decoder does.

    Python keeps them as lone surrogates, which cannot be encoded as UTF-8: echoing one in an
    error or handing it to a tokenizer would fail. Iterative, so deep nesting cannot overflow.
    """

    def fix(value: Any) -> Any:
        return _LONE_SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value

    root = [body]
    stack: list[list[Any] | dict[str, Any]] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for i, item in enumerate(node):
                node[i] = fix(item)
                if isinstance(item, list | dict):
                    stack.append(item)
        else:
            for key in list(node):
                value = node.pop(key)
                node[fix(key)] = fix(value)
                if isinstance(value, list | dict):
                    stack.append(value)
    return root[0]


def type_error(struct: str, field: str, value: Any, gotype: str) -> BadRequest:
    """Go's `cannot unmarshal` text for a wrongly typed field."""
    return BadRequest(
        f"json: cannot unmarshal {json_type(value)} into Go struct field {struct}.{field} "
        f"of type {gotype}"
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
