"""Chat template, stop strings and sampling defaults read from a model dir's tokenizer files."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_GENERATION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
}


def read_json(path: Path) -> dict[str, Any]:
    """An optional JSON object file; {} when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template(root: Path, tok_cfg: Mapping[str, Any]) -> str:
    """Template text from chat_template.jinja, tokenizer_config.json, then chat_template.json."""
    try:
        return (root / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    legacy = read_json(root / "chat_template.json").get("chat_template")
    for source in (tok_cfg.get("chat_template"), legacy):
        text = _pick_template(source)
        if text:
            return text
    return ""


def _pick_template(value: Any) -> str:
    """A template string, or the "default" (else first) entry of a [{name, template}] list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default", next(iter(named.values()), None))
        return chosen if isinstance(chosen, str) else ""
    return ""


# Chat-template variables that switch a model's reasoning: `enable_thinking` (Qwen3 and most
# <think> templates), `thinking` (DeepSeek-V3.1 style), `reasoning_effort` (gpt-oss levels).
# What a request's `think` sets them to: bridge/serving/thinking.py `template_switches`.
THINK_SWITCHES = ("enable_thinking", "thinking", "reasoning_effort")


def template_capabilities(template: str) -> list[str]:
    """Ollama capabilities a chat template enables: "tools" and/or "thinking"."""
    found = []
    if uses_tools(template):
        found.append("tools")
    if "enable_thinking" in template or "<think>" in template or think_switches(template):
        found.append("thinking")
    return found


def uses_tools(template: str) -> bool:
    """Does the template read a `tools` variable? (Ollama: does it render `.Tools`.)

    The word alone is not enough: a comment or a sentence may mention tools.
    >>> uses_tools("{% if tools %}{{ tools | tojson }}{% endif %}"), uses_tools("{# no tools #}hi")
    (True, False)
    """
    return bool(reads_variables(template, ("tools",)))


def think_switches(template: str) -> tuple[str, ...]:
    """The THINK_SWITCHES the template reads, in that order.

    >>> think_switches("{% if reasoning_effort is defined %}{{ reasoning_effort }}{% endif %}")
    ('reasoning_effort',)
    >>> think_switches("{% for m in messages %}{{ m.thinking }}{% endfor %}")
    ()
    """
    return reads_variables(template, THINK_SWITCHES)


def reads_variables(template: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of `names` the template reads as variables it does not set itself (Jinja AST)."""
    names = tuple(n for n in names if n in template)
    if not names:
        return ()
    try:
        from jinja2 import Environment, meta

        env = Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do"])
        read = meta.find_undeclared_variables(env.parse(template))
        return tuple(n for n in names if n in read)
    except Exception:  # Jinja dialects we do not parse ({% generation %}...): fall back to the word
        return tuple(n for n in names if re.search(rf"(?<![.'\"])\b{n}\b", template))


def default_parameters(
    root: Path, tok_cfg: Mapping[str, Any], gen_cfg: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """Ollama options from generation_config.json plus the eos strings as `stop`."""
    params: dict[str, list[Any]] = {}
    for source, key in _GENERATION_KEYS.items():
        value = gen_cfg.get(source)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            params[key] = [value]
    stops = stop_strings(root, tok_cfg, gen_cfg)
    if stops:
        params["stop"] = stops
    return params


def stop_strings(root: Path, tok_cfg: Mapping[str, Any], gen_cfg: Mapping[str, Any]) -> list[str]:
    """tokenizer_config eos_token, then generation_config eos_token_id(s) as text, deduplicated."""
    eos = tok_cfg.get("eos_token")
    found = [eos.get("content") if isinstance(eos, dict) else eos]
    ids = gen_cfg.get("eos_token_id")
    ids = [i for i in (ids if isinstance(ids, list) else [ids]) if _is_id(i)]
    if ids:
        names = _token_names(root, tok_cfg, ids)
        found += [names.get(i) for i in ids]
    return list(dict.fromkeys(s for s in found if isinstance(s, str) and s))


def _is_id(value: Any) -> bool:
    """True for a non-negative int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _token_names(root: Path, tok_cfg: Mapping[str, Any], ids: list[int]) -> dict[int, str]:
    """Token id -> text from added_tokens_decoder, else tokenizer.json (added_tokens, vocab)."""
    decoder = tok_cfg.get("added_tokens_decoder")
    names = {
        int(k): v.get("content")
        for k, v in (decoder.items() if isinstance(decoder, dict) else ())
        if str(k).isdigit() and isinstance(v, dict)
    }
    if all(i in names for i in ids):
        return names
    tokenizer = read_json(root / "tokenizer.json")  # parsed only when really needed: it can be big
    for entry in tokenizer.get("added_tokens") or []:
        if isinstance(entry, dict) and _is_id(entry.get("id")):
            names.setdefault(entry["id"], entry.get("content"))
    model = tokenizer.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    wanted = set(ids) - names.keys()
    if wanted and isinstance(vocab, dict):
        names.update({v: k for k, v in vocab.items() if v in wanted})
    return names
