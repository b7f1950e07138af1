"""A small subset of Go's text/template, enough for Ollama's `template` request field.

Supported: `{{ .Field }}`, `{{ if .Field }}...{{ else if .Other }}...{{ else }}...{{ end }}`,
`{{- ` / ` -}}` trimming. Block actions this subset cannot run (`range`, `with`, ...) are a 400;
other unknown actions render as nothing, as a missing field does in Go.

The template comes from the request, so parsing must stay linear whatever it holds: actions are
found with `str.find` (no regex, no backtracking), the length and nesting depth are capped, and
`check()` runs in the request thread — an unclosed action, an unbalanced `if`/`end` or a render
that would grow past the body cap is a 400 there, before anything reaches the engine thread.

>>> render("{{ if .System }}<s>{{ .System }}</s>{{ end }}[U]{{ .Prompt }}[A]", {"Prompt": "hi"})
'[U]hi[A]'
>>> tmpl = "{{- if .System }}{{ .System }}\\n{{ end -}}\\n  {{ .Prompt }}"
>>> render(tmpl, {"System": "s", "Prompt": "hi"})
's\\nhi'
>>> render("{{ if .Suffix }}F{{ else }}P{{ end }}", {})
'P'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import BadRequest

MAX_TEMPLATE = 64 * 1024  # characters; Ollama's largest model templates are a few KB
MAX_DEPTH = 64  # nested `if`s; the renderer recurses once per level
_SPACE = " \t\r\n"  # Go's trim markers need ASCII white space next to the dash
# Go actions that open a block this subset cannot run: refused, never silently rendered as nothing
_BLOCKS = ("range", "with", "define", "block", "template", "break", "continue")


@dataclass
class _If:
    cond: str
    then: list[_Node] = field(default_factory=list)
    other: list[_Node] = field(default_factory=list)
    in_else: bool = False
    chained: bool = False  # opened by `else if`: closed by its parent's `end`


_Node = tuple[str, str] | _If  # ("text", s), ("field", name), ("other", action) or an if block


def render(template: str, values: dict[str, str]) -> str:
    """Render `template` with `.Name` fields taken from `values`."""
    out: list[str] = []
    _emit(parse(template), values, out)
    return "".join(out)


def check(template: str, values: dict[str, str], max_output: int) -> None:
    """BadRequest unless `template` parses and renders to at most `max_output` characters.

    Counts both branches of every `if`, so the bound holds for any values; cheap (one linear
    parse) and meant for the request thread.
    """
    size = _size(parse(template), values)
    if size > max_output:
        raise BadRequest(f"template renders to more than {max_output} characters (at most "
                         f"{size}); the limit is the request body cap (MLX_BRIDGE_MAX_BODY)")


def parse(template: str) -> list[_Node]:
    """The template as a tree; BadRequest (Go's wording) when it is malformed or too big."""
    if len(template) > MAX_TEMPLATE:
        raise BadRequest(f"template too long: {len(template)} characters "
                         f"(the limit is {MAX_TEMPLATE})")
    root: list[_Node] = []
    stack: list[_If] = []
    for kind, value in _tokenize(template):
        body = _branch(stack[-1]) if stack else root
        keyword = (value.split(None, 1) or [""])[0]
        if kind == "text":
            if value:
                body.append(("text", value))
        elif keyword == "if":
            _open(stack, body, value[2:].strip())
        elif keyword == "else":
            if not stack or stack[-1].in_else:
                raise BadRequest("template: unexpected {{else}}")
            stack[-1].in_else = True
            rest = value[4:].strip()
            if rest.split(None, 1)[:1] == ["if"]:  # `else if` is an `if` inside the else branch
                _open(stack, stack[-1].other, rest[2:].strip(), chained=True)
            elif rest:
                raise BadRequest(f"template: {{{{{value}}}}} is not supported here")
        elif keyword == "end":
            if not stack:
                raise BadRequest("template: unexpected {{end}}")
            while stack.pop().chained:
                pass
        elif keyword in _BLOCKS:
            raise BadRequest(f"template: {{{{{keyword}}}}} is not supported here (only "
                             "{{.Field}}, {{if}}, {{else}}, {{else if}} and {{end}})")
        elif value.startswith("."):
            body.append(("field", value[1:]))
        else:
            body.append(("other", value))
    if stack:
        raise BadRequest("template: unexpected EOF")
    return root


def _open(stack: list[_If], body: list[_Node], cond: str, chained: bool = False) -> None:
    if len(stack) >= MAX_DEPTH:
        raise BadRequest(f"template: nesting deeper than {MAX_DEPTH} levels")
    block = _If(cond, chained=chained)
    body.append(block)
    stack.append(block)


def _branch(block: _If) -> list[_Node]:
    return block.other if block.in_else else block.then


def _tokenize(template: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s), applying the trim markers. Linear time."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while (start := template.find("{{", pos)) >= 0:
        end = template.find("}}", start + 2)
        if end < 0:
            raise BadRequest("template: unclosed action")
        inner = template[start + 2:end]
        trim_left = inner.startswith("-") and (len(inner) == 1 or inner[1] in _SPACE)
        trim_right = inner.endswith("-") and len(inner) >= 2 and inner[-2] in _SPACE
        if trim_left:
            inner = inner[1:]
        if trim_right:
            inner = inner[:-1]
        text = template[pos:start]
        if trim_next:
            text = text.lstrip()
        if trim_left:
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", inner.strip()))
        trim_next = trim_right
        pos = end + 2
    tail = template[pos:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


def _truthy(cond: str, values: dict[str, str]) -> bool:
    return bool(values.get(cond[1:], "")) if cond.startswith(".") else False


def _emit(nodes: list[_Node], values: dict[str, str], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _If):
            _emit(node.then if _truthy(node.cond, values) else node.other, values, out)
        elif node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(str(values.get(node[1], "")))


def _size(nodes: list[_Node], values: dict[str, str]) -> int:
    """An upper bound of the rendered length: both branches of every `if` count."""
    total = 0
    for node in nodes:
        if isinstance(node, _If):
            total += _size(node.then, values) + _size(node.other, values)
        elif node[0] == "text":
            total += len(node[1])
        elif node[0] == "field":
            total += len(str(values.get(node[1], "")))
    return total
