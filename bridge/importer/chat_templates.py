"""A tool-capable chat template for GGUFs whose own template has no tools but whose Ollama
template does.

Ollama serves SmolLM2 and Qwen2.5 with a ChatML template that lists the tools in the system
turn as `<tools>` JSON and reads calls back from `<tool_call>{"name": ..., "arguments": ...}
</tool_call>` (Hermes / Qwen2.5 style). A GGUF of those families may carry the Hugging Face
template without tools (SmolLM2's does), and a template without tools makes the bridge answer
`does not support tools`, which breaks Open WebUI's default chat and every tools client.

The replacement keeps the model's own prompt for chats without tools byte for byte: it takes
the default system prompt from the original template, and is only used when it renders a set
of probe conversations exactly as the original does.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from bridge.importer.go_emit import jinja_literal

log = logging.getLogger(__name__)

# general.basename / general.name patterns of the families whose Ollama template renders tools
# in this style (ollama.com/library/smollm2, /qwen2.5, /qwen2.5-coder).
TOOL_FAMILIES = {"smollm2": re.compile(r"smollm2", re.I),
                 "qwen2.5": re.compile(r"qwen2\.5(?!.*\bvl\b)", re.I)}
TOOL_PARSER = "json_tools"  # mlx-lm's parser for `<tool_call>` JSON (mlx_lm/tool_parsers)

_CHATML_TOOLS = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = DEFAULT_SYSTEM %}{%- set loop_messages = messages %}"
    "{%- endif %}\n"
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if system_message %}{{- system_message + '\\n\\n' }}{%- endif %}\n"
    "    {{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\n"
    "    {%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}\n"
    "    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n"
    "<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}\n"
    "{%- elif system_message is not none %}\n"
    "    {{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if message['role'] == 'assistant' and message['tool_calls'] is defined"
    " and message['tool_calls'] %}\n"
    "        {{- '<|im_start|>assistant' }}\n"
    "        {%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}\n"
    "        {%- for tool_call in message['tool_calls'] %}\n"
    "            {%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}\n"
    "            {%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message['role'] == 'tool' %}\n"
    "        {%- if loop.first or loop_messages[loop.index0 - 1]['role'] != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' + (message['content'] or '') + '\\n</tool_response>' }}\n"
    "        {%- if loop.last or loop_messages[loop.index0 + 1]['role'] != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '')"
    " + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)

# Conversations (without tools) the replacement must render exactly as the original does.
_PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "U1"}],
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"}],
    [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "U2"}],
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"},
     {"role": "assistant", "content": "A1"}],
    [{"role": "system", "content": " S2 "}, {"role": "user", "content": "\nU2\n"},  # kept as sent
     {"role": "assistant", "content": " A2 "}, {"role": "user", "content": "U3 "}],
]
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*)<\|im_end\|>\n"
                             r"<\|im_start\|>user\nU1<\|im_end\|>\n<\|im_start\|>assistant\n", re.S)


def chatml_tools_template(default_system: str | None) -> str:
    """The ChatML template with Hermes-style tools; `default_system` when no system message."""
    literal = "none" if default_system is None else jinja_literal(default_system)
    return _CHATML_TOOLS.replace("DEFAULT_SYSTEM", literal)


def render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
           tools: list[dict[str, Any]] | None = None) -> str:
    """Render as the engine does (transformers' sandboxed Jinja, trim_blocks and lstrip_blocks)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=template,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


def family(names: list[str]) -> str | None:
    """The tool family a GGUF belongs to, from its general.basename / general.name."""
    for label, pattern in TOOL_FAMILIES.items():
        if any(pattern.search(n) for n in names if n):
            return label
    return None


def with_tools(template: str) -> str | None:
    """The tool-capable replacement for a ChatML `template`, or None when it would change the
    prompt of a chat without tools (the template is not plain ChatML)."""
    try:
        first = render(template, _PROBES[0])
    except Exception as exc:  # a template that cannot render the probes is left alone
        log.info("chat template not replaced: it does not render a probe chat: %s", exc)
        return None
    bare = "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n"
    found = _DEFAULT_SYSTEM.fullmatch(first)
    if first != bare and not found:
        return None
    default = found.group(1) if found else None
    candidate = chatml_tools_template(default)
    for probe in _PROBES:
        for gen in (True, False):
            try:
                same = render(template, probe, gen) == render(candidate, probe, gen)
            except Exception:
                same = False
            if not same:
                return None
    return candidate


def upgrade(config: dict[str, Any], names: list[str]) -> str | None:
    """Give `config` (tokenizer_config.json) the tool template when the model's family has one
    in Ollama and its own template has no tools; returns the family when it did."""
    from bridge.modelinfo.tokenizer import uses_tools

    template = config.get("chat_template")
    label = family(names)
    if not label or not isinstance(template, str) or uses_tools(template):
        return None
    replacement = with_tools(template)
    if replacement is None:
        log.warning("chat template not replaced family=%s: not plain ChatML", label)
        return None
    config["chat_template"] = replacement
    config["tool_parser_type"] = TOOL_PARSER
    return label
