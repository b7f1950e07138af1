"""What an Ollama model's manifest knows besides the weights, carried into the imported model.

The template layer (Go) becomes the tokenizer's Jinja chat template (go_jinja), with the system
layer as the default system prompt; the params layer becomes the model's default options in
local_models.yaml (stop, temperature, num_ctx, ...), which a request's own options override.
All three are kept as they were in mlx_bridge_import.json, where /api/show reads them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import BadRequest
from bridge.importer.errors import ImportFailed
from bridge.importer.go_emit import jinja_literal
from bridge.importer.go_jinja import identifiers, to_jinja, tool_parser_for
from bridge.importer.go_parse import Unconvertible, parse
from bridge.wire.options import parse_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OllamaMeta:
    """The text layers of one Ollama manifest."""

    template: str = ""
    system: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_layers(cls, layers: dict[str, str], name: str = "") -> OllamaMeta:
        """From ollama_store's {"template"|"system"|"params": text}; bad params JSON fails."""
        params: Any = {}
        raw = layers.get("params", "").strip()
        if raw:
            try:
                params = json.loads(raw)
            except ValueError as exc:
                raise ImportFailed(f"the params layer of '{name}' is not JSON: {exc}") from None
            if not isinstance(params, dict):
                raise ImportFailed(f"the params layer of '{name}' is not a JSON object")
        return cls(layers.get("template", ""), layers.get("system", ""), params)

    def options(self) -> dict[str, Any]:
        """The params the engine uses, each checked as a request's option would be."""
        kept: dict[str, Any] = {}
        for key, value in self.params.items():
            try:
                parsed = parse_options({key: value})
            except BadRequest as exc:
                log.warning("Ollama parameter dropped key=%s error=%s", key, exc.message)
                continue
            if key in parsed.explicit:  # unknown keys and ones MLX has no use for are left out
                kept[key] = value
        return kept


def apply(config: dict[str, Any], meta: OllamaMeta) -> dict[str, Any]:
    """Set tokenizer_config's chat template from the Ollama layers; returns the import notes."""
    notes: dict[str, Any] = {"template": meta.template, "system": meta.system,
                             "params": meta.params}
    if meta.template:
        try:
            config["chat_template"] = to_jinja(meta.template, meta.system)
        except Unconvertible as exc:
            log.warning("Ollama template not converted, keeping the GGUF's error=%s", exc)
            notes.update(template_converted=False, template_error=str(exc))
        else:
            parser = tool_parser_for(meta.template)
            if parser and "tools" in identifiers(parse(meta.template)):
                config["tool_parser_type"] = parser
            notes["template_converted"] = True
            return notes
    if meta.system and isinstance(config.get("chat_template"), str):
        config["chat_template"] = with_default_system(config["chat_template"], meta.system)
        notes["system_applied"] = True
    return notes


def with_default_system(template: str, system: str) -> str:
    """`template` with `system` as the first message when a chat has none (Ollama's rule)."""
    return ("{%- if not messages or messages[0]['role'] != 'system' %}"
            "{%- set messages = [{'role': 'system', 'content': " + jinja_literal(system)
            + "}] + messages %}"
            "{%- endif %}" + template)
