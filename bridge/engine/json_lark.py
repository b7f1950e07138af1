"""llama.cpp's JSON grammar pieces as Lark for llguidance: terminals, builtin rules, literals.

The terminals are llama.cpp's PRIMITIVE_RULES and SPACE_RULE as regexes (16-digit integral and
fractional parts, whitespace after a token bounded); the builtin rules are any JSON value, object
and array. json_grammar names the ones a schema's grammar uses.
"""

from __future__ import annotations

import json
from typing import Any

# Terminals (llama.cpp's PRIMITIVE_RULES and SPACE_RULE as regexes). Strings: no raw control
# characters or DEL; escapes \" \\ \b \f \n \r \t \uXXXX (no \/).
CHAR = r'([^"\\\x00-\x1F\x7F]|\\(["\\bfnrt]|u[0-9a-fA-F]{4}))'
INT_PART = r"(0|[1-9][0-9]{0,15})"
TERMINALS = {
    "SP": r"/ |\n{1,2}[ \t]{0,20}/",
    "STRING": f'/"{CHAR}*"/',
    "INTEGER": f"/-?{INT_PART}/",
    "NUMBER": f"/-?{INT_PART}(\\.[0-9]{{1,16}})?([eE][-+]?{INT_PART})?/",
}
DATE = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
FORMATS = {
    "date": DATE, "time": TIME, "date-time": f"{DATE}T{TIME}",
    "uuid": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
# Any JSON value / object / array, every token followed by bounded whitespace (`space`).
BUILTINS = {
    "space": "SP?",
    "value": 'object | array | STRING | NUMBER | "true" | "false" | "null"',
    "object": '"{" space (member ("," space member)*)? "}"',
    "member": 'STRING space ":" space value space',
    "array": '"[" space (value space ("," space value space)*)? "]"',
}
PRIMITIVES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER",
              "boolean": '("true" | "false")', "null": '"null"', "object": "object",
              "array": "array"}


def literal(text: str) -> str:
    """`text` as a Lark string literal (JSON escapes; DEL escaped, Lark rejects it raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def json_literal(value: Any) -> str:
    """The exact JSON text of `value` (compact, as llama.cpp's dump) as a Lark literal."""
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
