"""Tool calls parsed out of generated text into Ollama's `message.tool_calls` shape.

The model's own format comes from mlx-lm (its TokenizerWrapper infers `tool_call_start`,
`tool_call_end` and a parser from `mlx_lm/tool_parsers/` at load; bridge.serving.output.OutputProbe
carries them here). Models mlx-lm has no parser for (Llama 3.x answers with a bare
`{"name": ..., "parameters": ...}` object) get a generic JSON reading, as Ollama does.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import BadRequest, Unsupported
from bridge.serving.markers import partial_suffix

log = logging.getLogger(__name__)

_ALNUM = string.ascii_letters + string.digits

Parser = Callable[[str, Any], Any]


@dataclass(frozen=True)
class ToolFormat:
    """How one model writes a tool call: markers around it and mlx-lm's parser (or none)."""

    start: str | None = None
    end: str | None = None
    parser: Parser | None = None

    @property
    def tagged(self) -> bool:
        return bool(self.start) and self.parser is not None


def call_id() -> str:
    """Ollama's tool call id: `call_` and 8 random letters or digits."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(8))


def native_call(name: str, arguments: dict[str, Any], index: int) -> dict[str, Any]:
    """One entry of `message.tool_calls` (arguments an object, as the native API has them)."""
    return {"id": call_id(), "function": {"index": index, "name": name, "arguments": arguments}}


def tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    names = set()
    for tool in tools or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


def normalise(parsed: Any, names: set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) pairs from a parser's result; [] when it is not a tool call.

    >>> normalise({"name": "f", "arguments": '{"x": 1}'})
    [('f', {'x': 1})]
    >>> normalise([{"name": "f", "parameters": {}}, {"function": {"name": "g", "arguments": {}}}])
    [('f', {}), ('g', {})]
    >>> normalise({"name": "other", "arguments": {}}, names={"f"})
    []
    """
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):
            item = item["function"]
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return []
        if not isinstance(args, dict) or (names is not None and item["name"] not in names):
            return []
        calls.append((item["name"], args))
    return calls


def forced_call_schema(tools: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The JSON schema of one call of one of `names` (`tool_choice` any/required/a tool).

    The output is then a bare `{"name": ..., "arguments": {...}}` object, whatever the model's
    own tool-call markers; each tool's `$defs` move to the root so its local `$ref`s still resolve.
    Objects with `properties` and no `additionalProperties` take no other keys (see closed()).

    >>> tool = {"function": {"name": "f", "parameters": {"type": "object"}}}
    >>> forced_call_schema([tool], ["f"])["properties"]["name"]
    {'const': 'f'}
    """
    defs: dict[str, Any] = {}
    options = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or fn.get("name") not in names:
            continue
        try:
            params = closed(fn.get("parameters") or {"type": "object"})
        except RecursionError:  # deeper than Python's stack: not worth a 500
            raise BadRequest(f"tool_choice: the schema of tool {fn['name']!r} "
                             "is nested too deeply") from None
        for key in ("$defs", "definitions"):
            for def_name, schema in (params.pop(key, None) or {}).items():
                if defs.setdefault(f"{key}/{def_name}", schema) != schema:
                    raise Unsupported("tool_choice: tools define different schemas named "
                                      f"{def_name!r}")
        options.append({"type": "object",
                        "properties": {"name": {"const": fn["name"]}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise BadRequest(f"tool_choice names a tool that is not in tools: {', '.join(names)}")
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    for path, sub in defs.items():
        key, def_name = path.split("/", 1)
        schema.setdefault(key, {})[def_name] = sub
    return schema


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def closed(schema: Any) -> Any:
    """A copy in which objects listing `properties` allow no other keys unless they say so.

    What OpenAI's strict function calling, llama.cpp's converter and Ollama's xgrammar path do;
    without it a sampled call can grow invented keys until the token limit.

    >>> inner = {"type": "object", "properties": {}}
    >>> schema = closed({"type": "object", "properties": {"a": inner}})
    >>> schema["additionalProperties"], schema["properties"]["a"]
    (False, {'type': 'object', 'properties': {}, 'additionalProperties': False})
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(sub) for sub in out[key]]
    if isinstance(out.get("items"), dict):
        out["items"] = closed(out["items"])
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class ToolCallExtractor:
    """Streams content through, taking tool calls out whole (one event per finished call).

    `forced`: the output is a bare JSON call by construction (a grammar from forced_call_schema),
    so it is read as JSON even for a model whose own calls use markers.
    """

    def __init__(self, fmt: ToolFormat, tools: list[dict[str, Any]] | None,
                 forced: bool = False) -> None:
        self.fmt = fmt
        self.tools = tools
        self.names = tool_names(tools)
        self.buf = ""
        self.inside = False  # tagged: between start and end markers
        # generic: undecided -> json | text
        self.mode = "json" if forced else "tagged" if fmt.tagged else "undecided"
        self.count = 0

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Add content; returns (content to release now, finished tool calls)."""
        self.buf += text
        if self.mode == "tagged":
            return self._tagged()
        if self.mode == "undecided":
            head = self.buf.lstrip()
            if not head:
                return "", []
            self.mode = "json" if head[0] in "{[" else "text"
        if self.mode == "text":
            out, self.buf = self.buf, ""
            return out, []
        return "", []  # json: the whole output is read at the end

    def flush(self) -> tuple[str, list[dict[str, Any]]]:
        """The end of the output: parse what is held, or give it back as content."""
        rest, self.buf = self.buf, ""
        if self.mode == "tagged" and self.inside:
            self.inside = False
            calls = self._parse(rest, self.fmt.parser)
            return ("", calls) if calls else (self.fmt.start + rest, [])
        if self.mode == "json":
            calls = self._parse(rest, _json_parser, self.names)  # bare JSON: only named tools
            return ("", calls) if calls else (rest, [])
        return rest, []

    def _tagged(self) -> tuple[str, list[dict[str, Any]]]:
        start, end = self.fmt.start or "", self.fmt.end or ""
        content, calls = "", []
        while True:
            if not self.inside:
                idx = self.buf.find(start)
                if idx < 0:
                    keep = partial_suffix(self.buf, start)
                    content += self.buf[: len(self.buf) - keep]
                    self.buf = self.buf[len(self.buf) - keep:]
                    return content, calls
                content += self.buf[:idx]
                self.buf = self.buf[idx + len(start):]
                self.inside = True
            idx = self.buf.find(end) if end else -1  # no end marker: the call runs to the end
            if idx < 0:
                return content, calls
            body, self.buf = self.buf[:idx], self.buf[idx + len(end):]
            self.inside = False
            parsed = self._parse(body, self.fmt.parser)
            if parsed:
                calls += parsed
            else:
                content += start + body + end  # not a call after all: keep the text

    def _parse(self, text: str, parser: Parser | None,
               names: set[str] | None = None) -> list[dict[str, Any]]:
        if parser is None:
            return []
        try:
            parsed = parser(text, self.tools)
        except Exception as exc:  # parsers raise anything on malformed text
            log.info("tool call not parsed error=%s text=%r", exc, text[:200])
            return []
        pairs = normalise(parsed, names)
        calls = [native_call(name, args, self.count + i) for i, (name, args) in enumerate(pairs)]
        self.count += len(calls)
        return calls


def _json_parser(text: str, tools: Any = None) -> Any:
    """A bare JSON tool call (or a list of them)."""
    return json.loads(text.strip())


def parse_all(text: str, fmt: ToolFormat,
              tools: list[dict[str, Any]] | None) -> tuple[str, list[dict]]:
    """Content and tool calls of a whole output.

    >>> fmt = ToolFormat("<tool_call>", "</tool_call>", _json_parser)
    >>> text = 'Sure.<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    >>> content, calls = parse_all(text, fmt, None)
    >>> content, [c["function"] for c in calls]
    ('Sure.', [{'index': 0, 'name': 'f', 'arguments': {'a': 1}}])
    """
    ex = ToolCallExtractor(fmt, tools)
    content, calls = ex.feed(text)
    rest, more = ex.flush()
    return content + rest, calls + more
