"""Ollama's Go chat templates (text/template) read into a syntax tree.

The lexer splits a template into text and actions (applying Go's `{{- ` / ` -}}` trimming) and
tokenizes each action; the parser builds the tree the Jinja emitter (go_emit) walks: text,
`{{ pipeline }}`, if / else if, range, with, break, continue, variables and function calls.
Anything the translation does not cover raises Unconvertible.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_SPACE = " \t\r\n"


class Unconvertible(ValueError):
    """The Go template uses something the translation does not cover."""


# ---------------------------------------------------------------- syntax tree


@dataclass
class Arg:
    """One operand: kind is field | var | str | num | bool | nil | ident | pipe."""

    kind: str
    value: Any = None
    fields: list[str] = field(default_factory=list)


@dataclass
class Pipe:
    decl: list[str]
    cmds: list[list[Arg]]


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:
    """if / with (branches tried in order) and range (one branch); `orelse` runs when none did."""

    kind: str
    branches: list[tuple[Pipe, list[Any]]]
    orelse: list[Any] | None = None


@dataclass
class LoopControl:
    word: str


# ---------------------------------------------------------------- lexing


def _split(template: str) -> list[Text | str]:
    """Text pieces and action sources, with Go's `{{- ` / ` -}}` trimming applied."""
    out: list[Text | str] = []
    pos, trim_next = 0, False
    while True:
        start = template.find("{{", pos)
        text = template[pos:] if start < 0 else template[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            out.append(Text(text))
            return out
        end = _action_end(template, start + 2)
        inner = template[start + 2:end]
        if _trim_mark(inner, 0):
            text, inner = text.rstrip(_SPACE), inner[2:]
        trim_next = len(inner) >= 2 and inner[-1] == "-" and inner[-2] in _SPACE
        if trim_next:
            inner = inner[:-2]
        out.append(Text(text))
        if not inner.strip().startswith("/*"):  # a comment leaves nothing
            out.append(inner)
        pos = end + 2


def _action_end(template: str, i: int) -> int:
    """Index of the `}}` closing the action that starts at i (strings may hold braces)."""
    start = i + 2 if _trim_mark(template, i) else i
    if template.startswith("/*", start):  # a comment: `{{/* ... */}}`
        close = template.find("*/", start + 2)
        end = template.find("}}", close) if close >= 0 else -1
        if end < 0:
            raise Unconvertible("unclosed comment")
        return end
    while i < len(template):
        if template.startswith("}}", i):
            return i
        if template[i] in "\"'`":
            i = _skip_quoted(template, i)
            continue
        i += 1
    raise Unconvertible("unclosed action")


def _trim_mark(text: str, i: int) -> bool:
    """`{{- `: a dash and then white space (`{{-3}}` is the number -3)."""
    return text[i:i + 1] == "-" and len(text) > i + 1 and text[i + 1] in _SPACE


def _skip_quoted(text: str, i: int) -> int:
    quote, i = text[i], i + 1
    while i < len(text):
        if text[i] == "\\" and quote != "`":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise Unconvertible("unterminated string")


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<op>:=|=|\||\(|\)|,)
  | (?P<str>"(?:\\.|[^"\\])*"|`[^`]*`)
  | (?P<char>'(?:\\.|[^'\\])+')
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+))
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)


@dataclass
class _Tok:
    kind: str
    text: str
    spaced: bool  # whitespace before it: `(x).F` chains, `(x) .F` is another operand


def _lex(source: str) -> list[_Tok]:
    toks, pos, spaced = [], 0, False
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if not m:
            raise Unconvertible(f"cannot read {source[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind == "space":
            spaced = True
            continue
        toks.append(_Tok(kind, m.group(), spaced))
        spaced = False
    return toks


# ---------------------------------------------------------------- parsing


class _Parser:
    def __init__(self, items: list[Text | str]) -> None:
        self.items, self.i = items, 0

    def nodes(self, closers: tuple[str, ...] = ()) -> tuple[list[Any], list[_Tok] | None]:
        """Nodes up to a closing action (`end`, `else ...`); returns (nodes, its tokens)."""
        out: list[Any] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, Text):
                if item.text:
                    out.append(item)
                continue
            toks = _lex(item)
            if not toks:
                raise Unconvertible("empty action")
            word = toks[0].text if toks[0].kind == "ident" else ""
            if word in ("end", "else"):
                if word not in closers:
                    raise Unconvertible(f"unexpected {{{{ {word} }}}}")
                return out, toks
            out.append(self.statement(word, toks))
        if closers:
            raise Unconvertible("missing {{ end }}")
        return out, None

    def statement(self, word: str, toks: list[_Tok]) -> Any:
        if word in ("if", "with"):
            return self.branch(word, toks[1:])
        if word == "range":
            pipe = _pipe(toks[1:], allow_two=True)
            body, closer = self.nodes(("end", "else"))
            orelse = self.rest(closer, "range")
            return Branch("range", [(pipe, body)], orelse)
        if word in ("break", "continue"):
            return LoopControl(word)
        if word in ("define", "template", "block"):
            raise Unconvertible(f"{{{{ {word} }}}} is not supported")
        return Action(_pipe(toks))

    def branch(self, kind: str, toks: list[_Tok]) -> Branch:
        node = Branch(kind, [])
        while True:
            pipe = _pipe(toks)
            body, closer = self.nodes(("end", "else"))
            node.branches.append((pipe, body))
            assert closer is not None
            if closer[0].text == "end":
                return node
            if len(closer) > 1 and closer[1].kind == "ident" and closer[1].text == kind:
                toks = closer[2:]  # else if / else with: one more branch
                continue
            node.orelse = self.rest(closer, kind)
            return node

    def rest(self, closer: list[_Tok] | None, kind: str) -> list[Any] | None:
        """After `{{ else }}`: the else body up to `{{ end }}`."""
        assert closer is not None
        if closer[0].text == "end":
            return None
        if len(closer) > 1:
            raise Unconvertible(f"unsupported else clause in {kind}")
        body, end = self.nodes(("end",))
        return body


def _pipe(toks: list[_Tok], allow_two: bool = False) -> Pipe:
    decl: list[str] = []
    for j, t in enumerate(toks):
        if t.kind == "op" and t.text in (":=", "="):
            names = [x for x in toks[:j] if not (x.kind == "op" and x.text == ",")]
            if not names or any(x.kind != "var" or "." in x.text for x in names):
                raise Unconvertible("bad variable declaration")
            if len(names) > (2 if allow_two else 1):
                raise Unconvertible("too many variables")
            decl, toks = [x.text[1:] for x in names], toks[j + 1:]
            break
    cmds, pos = _commands(toks, 0)
    if pos != len(toks):
        raise Unconvertible("unbalanced parentheses")
    if not cmds:
        raise Unconvertible("empty pipeline")
    return Pipe(decl, cmds)


def _commands(toks: list[_Tok], pos: int) -> tuple[list[list[Arg]], int]:
    cmds: list[list[Arg]] = [[]]
    while pos < len(toks):
        t = toks[pos]
        if t.kind == "op" and t.text == ")":
            break
        if t.kind == "op" and t.text == "|":
            cmds.append([])
            pos += 1
            continue
        arg, pos = _operand(toks, pos)
        cmds[-1].append(arg)
    if any(not c for c in cmds):
        raise Unconvertible("empty command")
    return cmds, pos


def _operand(toks: list[_Tok], pos: int) -> tuple[Arg, int]:
    t = toks[pos]
    if t.kind == "op" and t.text == "(":
        cmds, end = _commands(toks, pos + 1)
        if end >= len(toks) or toks[end].text != ")":
            raise Unconvertible("unclosed parenthesis")
        arg, pos = Arg("pipe", Pipe([], cmds)), end + 1
        if pos < len(toks) and toks[pos].kind == "field" and not toks[pos].spaced:
            arg.fields = toks[pos].text.split(".")[1:]  # (pipeline).Field
            pos += 1
        return arg, pos
    if t.kind == "field":
        return Arg("field", None, [f for f in t.text.split(".")[1:] if f]), pos + 1
    if t.kind == "var":
        name, *fields = t.text[1:].split(".")
        return Arg("var", name, fields), pos + 1
    if t.kind == "str":
        return Arg("str", _go_string(t.text)), pos + 1
    if t.kind == "num":
        return Arg("num", _go_number(t.text)), pos + 1
    if t.kind == "ident":
        if t.text in ("true", "false"):
            return Arg("bool", t.text == "true"), pos + 1
        if t.text == "nil":
            return Arg("nil"), pos + 1
        return Arg("ident", t.text), pos + 1
    raise Unconvertible(f"unexpected {t.text!r}")


def _go_string(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        raise Unconvertible(f"unsupported string escape in {text}") from None


def _go_number(text: str) -> int | float:
    try:
        return int(text, 0) if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|\d+)", text) else float(text)
    except ValueError:
        raise Unconvertible(f"bad number {text}") from None


def parse(template: str) -> list[Any]:
    """The Go template's syntax tree (Unconvertible when it has what the translation lacks)."""
    nodes, _ = _Parser(_split(template)).nodes()
    return nodes
