"""JSON schema -> a Lark grammar for llguidance, with Ollama's semantics.

Ollama compiles `format` with llama.cpp's json-schema-to-grammar (spec §3c), which is stricter than
JSON Schema: an object takes no keys beyond `properties` unless `additionalProperties` is true or a
schema; keys come in a fixed order (required ones, then optional ones, in `properties` order);
numbers have at most 16 integer and 16 fraction digits; whitespace after each token is bounded.
llguidance's own JSON compiler follows full JSON Schema instead, which let a small model add keys
or digits until `num_predict` ran out, so this module writes the grammar itself and hands leaves
that llguidance does well (regex `pattern`, fractional number bounds) to its `%json` blocks.

Beyond llama.cpp, bounds on `number` are enforced (llama.cpp ignores them) and `allOf` with one
member is that member. Keywords no grammar can enforce (`uniqueItems`, `not`, `if`...) are
`Unsupported` rather than silently dropped (Ollama drops them), so `auto` routing may try the
upstream.

This module walks the schema; json_lark holds llama.cpp's terminals and builtin rules, and
json_numbers turns numeric bounds into regexes.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from bridge.engine.json_lark import (
    BUILTINS,
    CHAR,
    FORMATS,
    PRIMITIVES,
    TERMINALS,
    json_literal,
    literal,
)
from bridge.engine.json_numbers import (
    has_bounds,
    int_range,
    integer_limits,
    number_limits,
    number_range,
)
from bridge.errors import BadRequest, Unsupported

MAX_DEPTH = 64  # nesting of the schema itself, so a hostile one is a 400 not a RecursionError
# llguidance's Earley parser stops at 2000 items in a row (each alternative that may start at one
# position takes ~2): more `anyOf` branches or optional keys in one object would fail mid-answer.
MAX_BRANCHES = 500
# Its symbol table is 16-bit (~4 symbols per rule here): a bigger grammar panics at job start.
MAX_RULES = 10_000

# Keywords that constrain values but that no grammar here enforces, with their no-op values.
UNENFORCED = {"not": None, "if": None, "then": None, "else": None, "dependentSchemas": None,
              "dependentRequired": None, "dependencies": None, "patternProperties": None,
              "propertyNames": None, "contains": None, "minContains": None, "maxContains": None,
              "uniqueItems": False, "multipleOf": None, "minProperties": 0, "maxProperties": None,
              "unevaluatedProperties": None, "unevaluatedItems": None, "$dynamicRef": None,
              "$recursiveRef": None}
ANY_OBJECT: dict[str, Any] = {"type": "object"}  # `format: "json"`: root object, values any JSON


def lark_for(fmt: str | dict[str, Any]) -> str:
    """The Lark grammar for a request's `format` ("json" or a schema); BadRequest/Unsupported."""
    builder = _Builder(ANY_OBJECT if fmt == "json" else fmt)
    return builder.grammar()


class _Builder:
    """One schema's rules: a rule per schema node, `$ref`s named once (so recursion terminates)."""

    def __init__(self, root: Any) -> None:
        if not isinstance(root, (dict, bool)):
            raise BadRequest('invalid format: expected "json" or a valid JSON Schema object')
        self.root = root
        self.rules: dict[str, str] = {}
        self.terminals: dict[str, str] = {}
        self.terminal_names: dict[str, str] = {}  # body -> name, so equal terminals are shared
        self.refs: dict[str, str] = {}
        self.used: set[str] = set()

    def grammar(self) -> str:
        start = self.visit(self.root, 0)
        lines = [f"start: {start}"]
        lines += [f"{name}: {body}" for name, body in self.rules.items()]
        lines += [f"{name}: {body}" for name, body in BUILTINS.items() if name in self.used]
        lines += [f"{name}: {body}" for name, body in self.terminals.items()]
        return "\n".join(lines) + "\n"

    # ---- names -------------------------------------------------------------------------------

    def rule(self, body: str) -> str:
        self.count()
        name = f"r{len(self.rules)}"
        self.rules[name] = body
        return name

    def terminal(self, body: str) -> str:
        if body not in self.terminal_names:
            self.count()
            self.terminal_names[body] = name = f"T{len(self.terminals)}"
            self.terminals[name] = body
        return self.terminal_names[body]

    def count(self) -> None:
        if len(self.rules) + len(self.terminals) >= MAX_RULES:
            raise Unsupported("format: this JSON schema cannot be enforced: it needs more than "
                              f"{MAX_RULES} grammar rules")

    def need(self, expr: str) -> str:
        """Pull in the builtin rules and terminals `expr` names; returns `expr`."""
        names = set(re.findall(r"[A-Za-z]+", expr))
        if names & {"value", "object", "array"}:
            names |= {"value", "object", "member", "array", "space", "STRING", "NUMBER"}
        if "space" in names:
            names.add("SP")
        self.used |= names & BUILTINS.keys()
        for name in sorted(names & TERMINALS.keys()):
            self.terminals.setdefault(name, TERMINALS[name])
        return expr

    # ---- schema nodes --------------------------------------------------------------------------

    def visit(self, schema: Any, depth: int) -> str:
        """A Lark expression (a name or a parenthesised group) matching `schema`'s JSON text."""
        if depth > MAX_DEPTH:
            raise BadRequest(f"format: JSON schema nesting deeper than {MAX_DEPTH}")
        if schema is True:
            return self.need("value")
        if schema is False:
            raise BadRequest("format: the JSON schema `false` matches nothing")
        if not isinstance(schema, dict):
            raise BadRequest(f"format: invalid JSON schema: {_short(schema)}")
        self.check_keywords(schema)
        kind = schema.get("type")
        if "$ref" in schema:
            return self.ref(schema["$ref"], depth)
        if "oneOf" in schema or "anyOf" in schema:
            options = schema.get("oneOf") or schema.get("anyOf")
            return self.union(options, depth)
        if isinstance(kind, list):
            return self.union([{**schema, "type": t} for t in kind], depth)
        if "const" in schema:
            return json_literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise BadRequest("format: `enum` must be a non-empty array")
            return self.literals(values)
        if kind in (None, "object") and ("properties" in schema or schema.get(
                "additionalProperties", True) is not True):
            return self.obj(schema, depth)
        if kind in (None, "object", "string") and "allOf" in schema:
            return self.all_of(schema, depth)
        if kind in (None, "array") and ("items" in schema or "prefixItems" in schema):
            return self.array(schema, depth)
        fmt = schema.get("format") if isinstance(schema.get("format"), str) else None
        if kind in (None, "string") and ("pattern" in schema or fmt in FORMATS or _uuid(fmt)):
            return self.formatted_string(schema)
        if kind == "string" and ("minLength" in schema or "maxLength" in schema):
            low, high = _count(schema, "minLength", 0), _count(schema, "maxLength", None)
            return self.terminal(f'/"{CHAR}{{{low},{"" if high is None else high}}}"/')
        if kind in (None, "integer") and has_bounds(schema):
            return self.integer(schema)
        if kind == "number" and has_bounds(schema):
            return self.number(schema)
        if kind == "object" or not schema:
            return self.need("object")
        if kind is None:
            return self.need("value")
        if kind == "array":  # no `items`: any values, llama.cpp's array (plus minItems/maxItems)
            return self.list_of(self.need("value"), schema)
        if isinstance(kind, str) and kind in PRIMITIVES:
            return self.need(PRIMITIVES[kind])
        raise BadRequest(f"format: Unrecognized schema: {_short(schema)}")

    def check_keywords(self, schema: dict[str, Any]) -> None:
        found = [k for k, noop in UNENFORCED.items() if k in schema and schema[k] != noop]
        if found:
            raise Unsupported(f"format: this JSON schema cannot be enforced: keywords {found} "
                              "are not supported")

    def ref(self, ref: Any, depth: int) -> str:
        if not isinstance(ref, str):
            raise BadRequest("format: `$ref` must be a string")
        if ref not in self.refs:
            self.refs[ref] = name = f"ref{len(self.refs)}"
            self.rules[name] = ""  # reserved: a recursive schema refers to itself by this name
            self.rules[name] = self.visit(self.resolve(ref), depth + 1)
        return self.refs[ref]

    def resolve(self, ref: Any) -> Any:
        """A local `#/...` JSON pointer into the root schema ($defs, definitions, anything)."""
        if not isinstance(ref, str):
            raise BadRequest("format: `$ref` must be a string")
        if not ref.startswith("#"):
            raise Unsupported(f"format: only local $ref (#/...) are supported, not {ref!r}")
        target: Any = self.root
        for part in unquote(ref[1:]).split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise BadRequest(f"format: $ref {ref!r} does not resolve in the schema")
        return target

    def union(self, options: Any, depth: int) -> str:
        if not isinstance(options, list) or not options:
            raise BadRequest("format: `anyOf`/`oneOf`/`type` alternatives must be "
                             "a non-empty array")
        _branches(len(options), "`anyOf`/`oneOf` alternatives")
        return "(" + " | ".join(self.visit(o, depth + 1) for o in options) + ")"

    def literals(self, values: list[Any]) -> str:
        """One terminal for all of them: the lexer, not the parser, tells them apart."""
        return self.terminal(" | ".join(json_literal(v) for v in values))

    def obj(self, schema: dict[str, Any], depth: int) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise BadRequest("format: `properties` must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list):
            raise BadRequest("format: `required` must be an array")
        return self.object_rule(list(props.items()), {r for r in required if isinstance(r, str)},
                                schema.get("additionalProperties"), depth)

    def object_rule(self, props: list[tuple[str, Any]], required: set[str], extra: Any,
                    depth: int) -> str:
        """llama.cpp's object: required keys in order, then each optional key (in order) or none,
        then extra keys only when `additionalProperties` is true or a schema."""
        kv = {name: self.rule(f"{literal(json.dumps(name, ensure_ascii=False))} space \":\" "
                              f"space {self.visit(sub, depth + 1)} space")
              for name, sub in props}
        self.need("space")
        req = [kv[name] for name, _ in props if name in required]
        opt = [kv[name] for name, _ in props if name not in required]
        _branches(len(opt), "optional properties in one object")
        repeat = [False] * len(opt)
        if extra is True or isinstance(extra, dict):
            value = self.need("value") if extra is True else self.visit(extra, depth + 1)
            key = self.need("STRING")
            if props:
                names = " | ".join(literal(json.dumps(n, ensure_ascii=False)) for n, _ in props)
                key = self.terminal(f"STRING & ~({names})")
            opt.append(self.rule(f'{key} space ":" space {value} space'))
            repeat.append(True)
        body = ' "," space '.join(req)
        if opt:
            choice = " | ".join(self.optional_tails(opt, repeat))
            body += f' ("," space ({choice}))?' if req else f" ({choice})?"
        return self.rule(f'"{{" space {body} "}}"')

    def optional_tails(self, opt: list[str], repeat: list[bool]) -> list[str]:
        """Each optional key with what may follow it: the later ones, each at most once (extra
        keys any number of times), one named rule per position so the grammar stays linear."""
        choices: list[str] = []
        tail = ""
        for i in range(len(opt) - 1, -1, -1):
            again = f' ("," space {opt[i]})*' if repeat[i] else ""
            choices.append(f"{opt[i]}{again} {tail}".strip())
            if i:
                mark = "*" if repeat[i] else "?"
                tail = self.rule(f'("," space {opt[i]}){mark} {tail}'.strip())
        return choices[::-1]

    def all_of(self, schema: dict[str, Any], depth: int) -> str:
        members = schema["allOf"]
        if not isinstance(members, list) or not members:
            raise BadRequest("format: `allOf` must be a non-empty array")
        if len(members) == 1:  # a wrapper (older Pydantic puts `$ref`s in one): exactly it
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            only = members[0]
            return self.visit({**rest, **only} if isinstance(only, dict) else only, depth + 1)
        props: list[tuple[str, Any]] = []
        required: set[str] = set()
        enums: list[list[Any]] = []

        def add(member: Any, is_required: bool) -> None:
            if isinstance(member, dict) and "$ref" in member:
                member = self.resolve(member["$ref"])
            if not isinstance(member, dict):
                return
            for name, sub in (member.get("properties") or {}).items():
                props.append((name, sub))
                if is_required:
                    required.add(name)
            if isinstance(member.get("enum"), list):
                enums.append(member["enum"])

        for member in members:  # llama.cpp: merge the properties; anyOf members are optional
            if isinstance(member, dict) and isinstance(member.get("anyOf"), list):
                for alt in member["anyOf"]:
                    add(alt, False)
            else:
                add(member, True)
        if enums:
            common = _common_values(enums)
            if common:
                return self.literals(common)
        return self.object_rule(props, required, None, depth)

    def array(self, schema: dict[str, Any], depth: int) -> str:
        items = schema.get("prefixItems", schema.get("items"))
        if isinstance(items, list):  # a tuple: exactly these, in order
            parts = [f"{self.visit(item, depth + 1)} space" for item in items]
            self.need("space")
            return self.rule('"[" space ' + ' "," space '.join(parts) + ' "]"')
        return self.list_of(self.visit(items, depth + 1), schema)

    def list_of(self, item: str, schema: dict[str, Any]) -> str:
        low, high = _count(schema, "minItems", 0), _count(schema, "maxItems", None)
        self.need("space")
        if high == 0:
            return self.rule('"[" space "]"')
        if high is not None and low > high:
            raise BadRequest("format: `minItems` is greater than `maxItems`")
        more = f'{{{max(low - 1, 0)},{"" if high is None else high - 1}}}'
        seq = f'{item} space ("," space {item} space){more}'
        return self.rule(f'"[" space {seq if low else f"({seq})?"} "]"')

    def formatted_string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if "pattern" in schema:  # llguidance's regex engine, via its JSON compiler
            pattern = schema["pattern"]
            if not (isinstance(pattern, str) and pattern.startswith("^")
                    and pattern.endswith("$")):  # llama.cpp's rule, so Ollama's error
                raise BadRequest("format: Pattern must start with '^' and end with '$'")
            keep = {k: schema[k] for k in ("pattern", "minLength", "maxLength") if k in schema}
            return self.rule("%json " + json.dumps({"type": "string", **keep}))
        rx = FORMATS["uuid" if _uuid(fmt) else fmt]
        return self.terminal(f'/"{rx}"/')

    def integer(self, schema: dict[str, Any]) -> str:
        lo, hi = integer_limits(schema)
        if lo > hi:
            raise BadRequest(f"format: no integer satisfies the bounds of {_short(schema)}")
        return self.terminal(f"/{int_range(lo, hi)}/")

    def number(self, schema: dict[str, Any]) -> str:
        lo, lo_ex, hi, hi_ex = number_limits(schema)
        if lo > hi or (lo == hi and (lo_ex or hi_ex)):
            raise BadRequest(f"format: no number satisfies the bounds of {_short(schema)}")
        if not all(float(b).is_integer() for b in (lo, hi)):
            # Fractional bounds: llguidance's exact range (its fraction has no digit cap).
            keep = {k: schema[k] for k in ("minimum", "maximum", "exclusiveMinimum",
                                           "exclusiveMaximum") if k in schema}
            return self.rule("%json " + json.dumps({"type": "number", **keep}))
        self.need("NUMBER")
        rx = number_range(int(lo), lo_ex, int(hi), hi_ex)
        return self.terminal(f"/{rx}/ & NUMBER")  # NUMBER caps the fraction at 16 digits


def _branches(count: int, what: str) -> None:
    if count > MAX_BRANCHES:
        raise Unsupported(f"format: this JSON schema cannot be enforced: {count} {what} "
                          f"(at most {MAX_BRANCHES})")


def _count(schema: dict[str, Any], key: str, default: int | None) -> Any:
    value = schema.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise BadRequest(f"format: `{key}` must be a non-negative integer")
    return value


def _uuid(fmt: Any) -> bool:
    return isinstance(fmt, str) and re.fullmatch(r"uuid[1-5]?", fmt) is not None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:200] + "..."


def _common_values(enums: list[list[Any]]) -> list[Any]:
    """The values every enum lists, in the first one's order: one pass over each distinct list
    (`$ref` repeats one list at no cost to the sender; comparing lists by membership was
    cubic: a 235 KB schema held a request thread for a minute)."""
    distinct = list({id(e): e for e in enums}.values())
    others = [{_canonical(v) for v in e} for e in distinct[1:]]
    return [v for v in distinct[0] if all(_canonical(v) in seen for seen in others)]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
