"""A small subset of Go's text/template, enough for Ollama's `template` request field.

Supported: `{{ .Field }}`, `{{ if .Field }}...{{ else }}...{{ end }}`, `{{- ` / ` -}}` trimming.
Unknown actions render as nothing, as a missing field does in Go.

>>> render("{{ if .System }}<s>{{ .System }}</s>{{ end }}[U]{{ .Prompt }}[A]", {"Prompt": "hi"})
'[U]hi[A]'
>>> render("{{- if .System }}{{ .System }}\\n{{ end -}}\\n  {{ .Prompt }}", {"System": "be nice", "Prompt": "hi"})
'be nice\\nhi'
>>> render("{{ if .Suffix }}F{{ else }}P{{ end }}", {})
'P'
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def render(template: str, values: dict[str, str]) -> str:
    """Render `template` with `.Name` fields taken from `values`."""
    tokens = _tokenize(template)
    out, _ = _render(tokens, 0, values)
    return out


def _tokenize(template: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s), applying the trim markers."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = template[pos:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


def _render(tokens: list[tuple[str, str]], i: int, values: dict[str, str]) -> tuple[str, int]:
    """Render from token i until an `else`/`end` at this level; return (text, index)."""
    out: list[str] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            out.append(value)
        elif value in ("end", "else"):
            return "".join(out), i
        elif value.startswith("if "):
            text, i = _render_if(tokens, i, values)
            out.append(text)
        elif value.startswith("."):
            out.append(str(values.get(value[1:], "")))
        i += 1
    return "".join(out), i


def _render_if(tokens: list[tuple[str, str]], i: int, values: dict[str, str]) -> tuple[str, int]:
    cond = tokens[i][1][3:].strip()
    truthy = bool(values.get(cond[1:], "")) if cond.startswith(".") else False
    then, i = _render(tokens, i + 1, values)
    other = ""
    if i < len(tokens) and tokens[i][1] == "else":
        other, i = _render(tokens, i + 1, values)
    return (then if truthy else other), i
