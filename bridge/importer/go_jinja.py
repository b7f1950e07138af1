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

The Go side is read by go_parse (lexer, parser, syntax tree) and written out as Jinja by go_emit;
this module builds the whole template around it.
"""

from __future__ import annotations

from typing import Any

from bridge.importer.go_emit import GO_PRINT, ROOT, Emitter, jinja_literal
from bridge.importer.go_parse import Action, Arg, Branch, Pipe, parse

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
        body = "{% set gv = namespace() %}" + Emitter(root).nodes(nodes, ROOT)
        return GO_PRINT + head + _COLLATE + body
    root = {"System": "S", "Prompt": "P", "Response": "R", "Suffix": "''", **think}
    macros = "".join(
        "{% macro " + name + "(S, P, R) %}{% set gv = namespace() %}"
        + Emitter(root).nodes(tree, ROOT) + "{% endmacro %}"
        for name, tree in (("go_full", nodes), ("go_last", cut_after_response(nodes)))
    )
    return GO_PRINT + macros + head + _COLLATE + _LEGACY_LOOP


def tool_parser_for(template: str) -> str | None:
    """mlx-lm's parser for the tool calls a Go template asks for (None: bare JSON, as Llama 3's)."""
    if "<tool_call>" in template:
        return "json_tools"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    return None
