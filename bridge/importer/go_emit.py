"""A Go template's syntax tree (go_parse) written out as Jinja that prints what Go prints.

Values print as Go prints them (the `go_print` macro): strings as they are, booleans as
true/false, objects as compact JSON. Fields become dict keys (ToolCalls -> tool_calls), Go's
functions become Jinja expressions, and `$` reads the template's top-level data through `root`.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.importer.go_parse import (
    Action,
    Arg,
    Branch,
    LoopControl,
    Pipe,
    Text,
    Unconvertible,
)

# Go fields whose values are maps: `range` walks them in sorted key order, as Go does.
_MAP_FIELDS = {"Properties", "Arguments", "Defs"}
# Message fields whose key in the bridge's message dicts is not the snake_case of the Go name.
_KEYS = {"ToolName": "name"}
_JSON = "tojson(separators=(',', ':'))"
GO_PRINT = (
    "{% macro go_print(v) %}{% if v is none or v is undefined %}"
    "{% elif v is boolean %}{{ 'true' if v else 'false' }}"
    "{% elif v is mapping or (v is iterable and v is not string) %}{{ v | " + _JSON + " }}"
    "{% else %}{{ v }}{% endif %}{% endmacro %}"
)


ROOT = object()  # the template's top-level data (`.` at the top, `$` anywhere)


def jinja_literal(text: str) -> str:
    """A Jinja string literal for `text`, with no raw newline or brace inside.

    >>> jinja_literal("a'b\\n{x}")
    "'a\\\\'b\\\\n\\\\x7bx\\\\x7d'"
    """
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'")
        elif ch == "\n":
            out.append("\\n")
        elif ch in "{}%#\r\t" or ord(ch) < 32:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def _text(text: str) -> str:
    """Literal text where it cannot be mistaken for Jinja syntax or trimmed, else an expression."""
    if text and text == text.strip() and not any(c in text for c in "{}%#\\\n\r\t"):
        return text
    return "{{ " + jinja_literal(text) + " }}" if text else ""


def _key(name: str) -> str:
    """A Go field name as the key of the bridge's dicts: ToolCalls -> tool_calls, ID -> id."""
    return _KEYS.get(name) or re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


class Emitter:
    def __init__(self, root: dict[str, str]) -> None:
        self.root, self.n = root, 0

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"go_{prefix}{self.n}"

    def nodes(self, nodes: list[Any] | None, dot: Any) -> str:
        return "".join(self.node(n, dot) for n in nodes or [])

    def node(self, n: Any, dot: Any) -> str:
        if isinstance(n, Text):
            return _text(n.text)
        if isinstance(n, LoopControl):
            return "{% " + n.word + " %}"
        if isinstance(n, Action):
            if n.pipe.decl:
                return self.declare(n.pipe.decl, self.pipe(n.pipe, dot))
            return "{{ go_print(" + self.pipe(n.pipe, dot) + ") }}"
        if n.kind == "range":
            return self.range(n, dot)
        return self.branch(n, dot)

    def declare(self, names: list[str], value: str) -> str:
        return "{% set gv.v_" + names[0] + " = " + value + " %}"

    def branch(self, n: Branch, dot: Any) -> str:
        out, opened = "", 0
        for k, (pipe, body) in enumerate(n.branches):
            value = self.pipe(pipe, dot)
            if pipe.decl:
                if k:
                    raise Unconvertible("a variable declared in else if / else with")
                out += self.declare(pipe.decl, value)
                value = "gv.v_" + pipe.decl[0]
            inner = dot
            if n.kind == "with":
                inner = self.fresh("w")
                out += ("{% else %}" if k else "") + "{% set " + inner + " = " + value + " %}"
                out += "{% if " + inner + " %}"
                opened += 1
            else:
                out += ("{% elif " if k else "{% if ") + value + " %}"
                opened = 1
            out += self.nodes(body, inner)
        if n.orelse is not None:
            out += "{% else %}" + self.nodes(n.orelse, dot)
        return out + "{% endif %}" * opened

    def range(self, n: Branch, dot: Any) -> str:
        pipe, body = n.branches[0]
        value = self.pipe(Pipe([], pipe.cmds), dot)
        item, key = self.fresh("d"), self.fresh("k")
        last = pipe.cmds[-1][-1] if len(pipe.cmds[-1]) == 1 else None
        is_map = last is not None and bool(last.fields) and last.fields[-1] in _MAP_FIELDS
        if is_map:
            head = "{% for " + key + ", " + item + " in (" + value + " or {}) | dictsort %}"
        else:
            head = "{% for " + item + " in (" + value + " or []) %}"
        index = key if is_map else "loop.index0"
        names = pipe.decl
        sets = ""
        if len(names) == 1:
            sets = self.declare(names, item)
        elif len(names) == 2:
            sets = self.declare(names[:1], index) + self.declare(names[1:], item)
        out = head + sets + self.nodes(body, item)
        if n.orelse is not None:
            out += "{% else %}" + self.nodes(n.orelse, dot)
        return out + "{% endfor %}"

    # -- expressions

    def pipe(self, p: Pipe, dot: Any) -> str:
        value: str | None = None
        for cmd in p.cmds:
            value = self.command(cmd, dot, value)
        assert value is not None
        return value

    def command(self, cmd: list[Arg], dot: Any, piped: str | None) -> str:
        head = cmd[0]
        if head.kind == "ident":
            args = [self.value(a, dot) for a in cmd[1:]] + ([piped] if piped is not None else [])
            if head.value == "printf":
                if len(cmd) < 2 or cmd[1].kind != "str":
                    raise Unconvertible("printf needs a literal format")
                return _printf(cmd[1].value, args[1:])
            return _call(head.value, args)
        if len(cmd) > 1 or piped is not None:
            raise Unconvertible("a value cannot take arguments")
        return self.value(head, dot)

    def value(self, a: Arg, dot: Any) -> str:
        if a.kind == "str":
            return jinja_literal(a.value)
        if a.kind == "num":
            return repr(a.value)
        if a.kind == "bool":
            return "true" if a.value else "false"
        if a.kind == "nil":
            return "none"
        if a.kind == "ident":
            return _call(a.value, [])
        if a.kind == "pipe":
            return self.fields("(" + self.pipe(a.value, dot) + ")", a.fields)
        base = dot if a.kind == "field" else (ROOT if a.value == "" else "gv.v_" + a.value)
        return self.fields(base, a.fields)

    def fields(self, base: Any, names: list[str]) -> str:
        if base is ROOT:
            if not names:
                raise Unconvertible("the template's whole data used as a value")
            base, names = self.root.get(names[0], "none"), names[1:]
        return base + "".join(f"[{jinja_literal(_key(f))}]" for f in names)


def _call(name: str, args: list[str]) -> str:
    def need(n: int) -> None:
        if len(args) < n:
            raise Unconvertible(f"{name} needs {n} arguments")

    if name == "eq":
        need(2)
        return "(" + " or ".join(f"{args[0]} == {b}" for b in args[1:]) + ")"
    ops = {"ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
    if name in ops:
        need(2)
        return f"({args[0]} {ops[name]} {args[1]})"
    if name in ("and", "or"):
        need(1)
        return "(" + f" {name} ".join(args) + ")"
    if name == "not":
        need(1)
        return f"(not {args[0]})"
    if name == "len":
        need(1)
        return f"({args[0]} | length)"
    if name == "index":
        need(1)
        return args[0] + "".join(f"[{k}]" for k in args[1:])
    if name == "slice":
        need(1)
        if len(args) > 3:
            raise Unconvertible("slice with a capacity")
        bounds = args[1:] + [""] * (2 - len(args[1:]))
        return f"{args[0]}[{bounds[0]}:{bounds[1]}]" if len(args) > 1 else args[0]
    if name == "json":
        need(1)
        return f"({args[0]} | {_JSON})"
    if name == "print":
        return "(" + " ~ ".join(f"go_print({a})" for a in args) + ")" if args else "''"
    if name == "currentDate":
        return "strftime_now('%Y-%m-%d')"
    raise Unconvertible(f"function {name} is not supported")


def _printf(fmt: str, args: list[str]) -> str:
    """Go's printf for %s, %v and %d (Python's % operator, through Jinja's `format`)."""
    verbs = re.findall(r"%.", fmt)
    if any(v not in ("%s", "%v", "%d", "%%") for v in verbs):
        raise Unconvertible(f"printf verbs {verbs}")
    printed = [v for v in verbs if v != "%%"]
    values = [a if v == "%d" else f"go_print({a})" for v, a in zip(printed, args, strict=False)]
    return f"({jinja_literal(fmt.replace('%v', '%s'))} | format({', '.join(values)}))"
