"""Ollama's Go chat templates -> Hugging Face Jinja chat templates that render the same prompt.

The engine renders prompts with the tokenizer's Jinja chat template, so a model imported from
the Ollama store gets its Go template (text/template, Ollama's template/template.go) translated
once, at import. The Jinja first builds what Ollama hands its template:

- the model's SYSTEM is prepended when the first message is not a system message
  (server/routes.go ChatHandler);
- consecutive messages of one role (tools excepted) are merged with a blank line, and `.System`
  is every system message joined the same way (template.collate);
- a template that names `.Messages` is executed once with `.System`, `.Messages`, `.Tools`,
  `.Think`, `.IsThinkSet`; any other template is executed once per (system, prompt, response)
  turn, the last turn cut after `.Response` (template.Execute's legacy path and deleteNode).

Then the template itself is translated node by node: text, `{{ pipeline }}`, if / else if,
range (lists, and maps in key order), with, break, continue, variables, and the functions
Ollama's templates use (eq ne lt le gt ge and or not len index slice print printf json
currentDate). Anything else raises Unconvertible; the importer then keeps the GGUF's template.

Values print as Go prints them: strings as they are, booleans as true/false, and objects (a
tool, a tool call's arguments) as compact JSON, as their String() methods do. Go's JSON escapes
<, > and & and orders struct fields its own way; the Jinja keeps the request's key order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_SPACE = " \t\r\n"
# Go fields whose values are maps: `range` walks them in sorted key order, as Go does.
_MAP_FIELDS = {"Properties", "Arguments", "Defs"}
# Message fields whose key in the bridge's message dicts is not the snake_case of the Go name.
_KEYS = {"ToolName": "name"}
_JSON = "tojson(separators=(',', ':'))"
_GO_PRINT = (
    "{% macro go_print(v) %}{% if v is none or v is undefined %}"
    "{% elif v is boolean %}{{ 'true' if v else 'false' }}"
    "{% elif v is mapping or (v is iterable and v is not string) %}{{ v | " + _JSON + " }}"
    "{% else %}{{ v }}{% endif %}{% endmacro %}"
)


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


# ---------------------------------------------------------------- identifiers


def identifiers(nodes: list[Any]) -> set[str]:
    """Lower-cased field names the template reads (Ollama's Template.Vars)."""
    found: set[str] = set()

    def pipe(p: Pipe) -> None:
        for cmd in p.cmds:
            for a in cmd:
                found.update(f.lower() for f in a.fields)
                if a.kind == "pipe":
                    pipe(a.value)

    def walk(ns: list[Any] | None) -> None:
        for n in ns or []:
            if isinstance(n, Action):
                pipe(n.pipe)
            elif isinstance(n, Branch):
                for p, body in n.branches:
                    pipe(p)
                    walk(body)
                walk(n.orelse)

    walk(nodes)
    return found


# ---------------------------------------------------------------- the legacy path's last turn


def cut_after_response(nodes: list[Any]) -> list[Any]:
    """Drop everything after the first `.Response` field, walking as Ollama's deleteNode does
    (branch conditions are not walked, so `{{ if .Response }}` stays as it is)."""
    cut = False

    def arg(a: Arg) -> Arg | None:
        nonlocal cut
        if cut:
            return None
        if a.kind == "field" and "Response" in a.fields:
            cut = True
            return a
        if a.kind == "pipe":
            inner = pipe(a.value)
            return None if inner is None else Arg("pipe", inner, a.fields)
        return a

    def pipe(p: Pipe) -> Pipe | None:
        cmds = []
        for cmd in p.cmds:
            args = [x for x in (arg(a) for a in cmd) if x is not None]
            if not args:
                return None
            cmds.append(args)
        return Pipe(p.decl, cmds) if cmds else None

    def walk(ns: list[Any] | None) -> list[Any] | None:
        if ns is None:
            return None
        out = []
        for n in ns:
            if cut:
                break
            if isinstance(n, Action):
                p = pipe(n.pipe)
                if p is not None:
                    out.append(Action(p))
            elif isinstance(n, Branch):
                branches = []
                for cond, body in n.branches:
                    if cut:
                        break
                    branches.append((cond, walk(body) or []))
                orelse = None if cut else walk(n.orelse)
                out.append(Branch(n.kind, branches, orelse))
            else:
                out.append(n)
        return out

    return walk(nodes) or []


# ---------------------------------------------------------------- Jinja output


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


class _Emitter:
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


# ---------------------------------------------------------------- the whole template


_COLLATE = (
    "{% set go_state = namespace(parts=[], messages=[]) %}"
    "{% for m in go_in %}"
    "{% if m['role'] == 'system' %}"
    "{% set go_state.parts = go_state.parts + [m['content'] or ''] %}{% endif %}"
    "{% if go_state.messages and go_state.messages[-1]['role'] == m['role']"
    " and m['role'] != 'tool' %}"
    "{% set go_state.messages = go_state.messages[:-1] + [dict(go_state.messages[-1], "
    "content=(go_state.messages[-1]['content'] or '') ~ '\\n\\n' ~ (m['content'] or ''))] %}"
    "{% else %}{% set go_state.messages = go_state.messages + [m] %}{% endif %}"
    "{% endfor %}"
)

_LEGACY_LOOP = (
    "{% set go_turn = namespace(s='', p='', r='') %}"
    "{% for m in go_state.messages %}"
    "{% if m['role'] == 'system' %}"
    "{% if go_turn.p or go_turn.r %}{{ go_full(go_turn.s, go_turn.p, go_turn.r) }}"
    "{% set go_turn.p = '' %}{% set go_turn.r = '' %}{% endif %}"
    "{% set go_turn.s = m['content'] or '' %}"
    "{% elif m['role'] == 'user' %}"
    "{% if go_turn.r %}{{ go_full(go_turn.s, go_turn.p, go_turn.r) }}"
    "{% set go_turn.s = '' %}{% set go_turn.r = '' %}{% endif %}"
    "{% set go_turn.p = m['content'] or '' %}"
    "{% elif m['role'] == 'assistant' %}{% set go_turn.r = m['content'] or '' %}{% endif %}"
    "{% endfor %}"
    "{{ go_last(go_turn.s, go_turn.p, go_turn.r) }}"
)


def _think_fields(used: set[str], thinks_by_default: bool) -> dict[str, str]:
    """Only a template that reads .Think gets `enable_thinking` (a capability signal)."""
    if not used & {"think", "isthinkset", "thinklevel"}:
        return {}
    default = "true" if thinks_by_default else "false"
    return {"Think": f"(enable_thinking if enable_thinking is defined else {default})",
            "IsThinkSet": "(enable_thinking is defined)", "ThinkLevel": "''"}


def to_jinja(template: str, system: str = "") -> str:
    """The Jinja chat template rendering what Ollama renders for `template` and SYSTEM `system`."""
    nodes = parse(template)
    used = identifiers(nodes)
    head = "{% set go_in = messages %}"
    if system:
        head += ("{% if not messages or messages[0]['role'] != 'system' %}"
                 "{% set go_in = [{'role': 'system', 'content': " + jinja_literal(system)
                 + "}] + messages %}"
                 "{% endif %}")
    think = _think_fields(used, "<think>" in template or "thinking" in used)
    if "messages" in used:
        root = {"System": "(go_state.parts | join('\\n\\n'))", "Messages": "go_state.messages",
                "Prompt": "''", "Response": "''", "Suffix": "''", **think}
        if "tools" in used:
            root["Tools"] = "(tools or [])"
        body = "{% set gv = namespace() %}" + _Emitter(root).nodes(nodes, ROOT)
        return _GO_PRINT + head + _COLLATE + body
    root = {"System": "S", "Prompt": "P", "Response": "R", "Suffix": "''", **think}
    macros = "".join(
        "{% macro " + name + "(S, P, R) %}{% set gv = namespace() %}"
        + _Emitter(root).nodes(tree, ROOT) + "{% endmacro %}"
        for name, tree in (("go_full", nodes), ("go_last", cut_after_response(nodes)))
    )
    return _GO_PRINT + macros + head + _COLLATE + _LEGACY_LOOP


def tool_parser_for(template: str) -> str | None:
    """mlx-lm's parser for the tool calls a Go template asks for (None: bare JSON, as Llama 3's)."""
    if "<tool_call>" in template:
        return "json_tools"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    return None
