"""Ollama Go templates translated to Jinja (bridge/importer/go_jinja.py), rendered as the engine
renders them (transformers' sandboxed Jinja). Expected prompts are what Ollama's Go renderer
produces for the same data (template/template.go, worked out by hand from text/template's rules);
the legacy turns are also checked against the bridge's own Go renderer
(bridge/engine/gotemplate.py)."""

from __future__ import annotations

import pytest

from bridge.engine.gotemplate import render as go_render
from bridge.importer.chat_templates import render
from bridge.importer.go_jinja import to_jinja, tool_parser_for
from bridge.importer.go_parse import Unconvertible
from bridge.modelinfo.tokenizer import template_capabilities

# ChatML with tools, written in the idiom of Ollama's library templates (Messages mode).
CHATML_TOOLS = """
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}
<tools>
{{- range .Tools }}
{{ .Function }}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}{{ range .ToolCalls }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
</tool_call>{{ end }}
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""
# The older style: one System/Prompt/Response turn per execution.
LEGACY = ("{{ if .System }}<|system|>{{ .System }}</s>{{ end }}<|user|>{{ .Prompt }}</s>"
          "<|assistant|>{{ .Response }}</s>")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
FUNCTION_JSON = ('{"name":"get_weather","description":"Current weather in a city","parameters":'
                 '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}')
CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def test_messages_template_renders_tools_calls_and_results_as_ollama_does():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": "Sunny", "name": "get_weather"}]
    assert render(to_jinja(CHATML_TOOLS), messages, tools=[WEATHER]) == (
        f"<|im_start|>system\nBe brief.\n<tools>\n{FUNCTION_JSON}\n</tools><|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city":"Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nSunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_without_tools_or_system_there_is_no_system_turn_and_a_last_assistant_stays_open():
    jinja = to_jinja(CHATML_TOOLS)
    assert render(jinja, [{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    partial = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    assert render(jinja, partial, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHel")


def test_model_system_is_the_default_and_same_role_messages_merge():
    template = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    jinja = to_jinja(template, system="SYS")
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert render(jinja, two_users) == "SYS|system:SYS;user:a\n\nb;"
    own = [{"role": "system", "content": "X"}, {"role": "system", "content": "Y"},
           {"role": "user", "content": "a"}]
    assert render(jinja, own) == "X\n\nY|system:X\n\nY;user:a;"


def test_legacy_template_runs_once_per_turn_and_cuts_the_last_after_response():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    first = go_render(LEGACY, {"System": "S", "Prompt": "U1", "Response": "A1"})
    assert first == "<|system|>S</s><|user|>U1</s><|assistant|>A1</s>"
    assert render(to_jinja(LEGACY), messages) == first + "<|user|>U2</s><|assistant|>"
    assert render(to_jinja(LEGACY, system="Be kind."), [{"role": "user", "content": "U"}]) == (
        "<|system|>Be kind.</s><|user|>U</s><|assistant|>")


def test_syntax_trims_comments_maps_with_printf_json_index_and_multi_eq():
    template = (
        "{{/* a comment */ -}}\n  "
        "{{ range $k, $v := (index .Tools 0).Function.Parameters.Properties }}[{{ $k }}:{{ $v.Type "
        "}}]{{ end }}"
        "{{ with .System }}S={{ . }}{{ else }}no system{{ end }} {{ printf \"%s-%d\" \"x\" 3 }} "
        "{{ json (index .Messages 0).Role }} {{ if eq (index .Messages 0).Role \"tool\" \"user\" "
        "}}yes{{ end }}"
        "{{ range .Messages }}{{ if true }}{{ break }}{{ end }}never{{ end }}")
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}}}
    out = render(to_jinja(template), [{"role": "user", "content": "hi"}], tools=[tool])
    assert out == '[a:string][b:integer]no system x-3 "user" yes'


def test_think_fields_follow_the_request():
    template = ("{{ range .Messages }}{{ .Content }}{{ end }}"
                "{{ if and $.IsThinkSet (not $.Think) }}<think></think>{{ end }}")
    jinja = to_jinja(template)
    from transformers.utils.chat_template_utils import render_jinja_template

    def run(**kwargs):
        return render_jinja_template([[{"role": "user", "content": "hi"}]], chat_template=jinja,
                                     add_generation_prompt=True, **kwargs)[0][0]

    assert (run(), run(enable_thinking=True), run(enable_thinking=False)) == (
        "hi", "hi", "hi<think></think>")


def test_capabilities_come_from_what_the_go_template_reads():
    assert "tools" in template_capabilities(to_jinja(CHATML_TOOLS))
    assert template_capabilities(to_jinja(LEGACY)) == []
    assert tool_parser_for(CHATML_TOOLS) == "json_tools" and tool_parser_for(LEGACY) is None


@pytest.mark.parametrize("template", [
    '{{ template "other" . }}', '{{ define "x" }}a{{ end }}', "{{ toTypeScriptType .Tools }}",
    "{{ if .System }}unclosed", "{{ .System }", '{{ printf "%q" .System }}',
])
def test_what_is_not_covered_is_refused(template):
    with pytest.raises(Unconvertible):
        to_jinja(template)
