"""Turn a PromptSpec into prompt tokens with the model's own chat template."""

from __future__ import annotations

from typing import Any

from bridge.engine.gotemplate import render
from bridge.engine.jobs import PromptSpec
from bridge.errors import BadRequest


def prompt_tokens(tokenizer: Any, spec: PromptSpec, max_chars: int | None = None) -> list[int]:
    """Render and tokenize the prompt for one job (the request's `context` first).

    `max_chars`: keep only that many characters at the end of the rendered text. The caller
    makes it large enough to hold more tokens than the context window, so the window is filled
    (or found too small) just the same, while an oversized prompt costs no more to tokenize.
    """
    if spec.messages is not None:
        return encode(tokenizer, _tail(chat_prompt(tokenizer, spec), max_chars))
    vocab = len(tokenizer)
    if any(not 0 <= t < vocab for t in spec.context):
        raise BadRequest("context contains token ids outside this model's vocabulary "
                         f"(0..{vocab - 1})")
    return list(spec.context) + encode(tokenizer, _tail(generate_text(tokenizer, spec), max_chars))


def chat_prompt(tokenizer: Any, spec: PromptSpec) -> str:
    """A chat job's whole prompt text (spec.messages rendered with the model's template)."""
    assert spec.messages is not None
    return chat_text(tokenizer, spec.messages, spec.tools, spec.template_vars)


def _tail(text: str, max_chars: int | None) -> str:
    return text[len(text) - max_chars:] if max_chars is not None and len(text) > max_chars else text


def encode(tokenizer: Any, text: str) -> list[int]:
    """Tokenize, adding BOS only when the text does not already start with it."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = bos is None or not text.startswith(bos)
    return list(tokenizer.encode(text, add_special_tokens=add_special))


def generate_text(tokenizer: Any, spec: PromptSpec) -> str:
    """The prompt text of /api/generate: raw, a `template` override, or the chat template."""
    if spec.suffix:
        raise BadRequest("this model does not support insert (suffix)")
    if spec.raw:
        return spec.prompt
    if spec.template:
        return render(spec.template, {"System": spec.system, "Prompt": spec.prompt, "Response": ""})
    if not getattr(tokenizer, "has_chat_template", False):
        return f"{spec.system}\n\n{spec.prompt}" if spec.system else spec.prompt
    messages = [{"role": "system", "content": spec.system}] if spec.system else []
    messages.append({"role": "user", "content": spec.prompt})
    return chat_text(tokenizer, messages, None, spec.template_vars)


def chat_text(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict] | None,
              variables: dict[str, Any] | None = None) -> str:
    """Render a whole chat history; a trailing assistant message is continued, not closed.

    `variables`: extra template variables (the reasoning switches, PromptSpec.template_vars)."""
    if not getattr(tokenizer, "has_chat_template", False):
        return "\n\n".join(m.get("content", "") for m in messages)
    continue_last = bool(messages) and messages[-1]["role"] == "assistant"
    kwargs: dict[str, Any] = dict(variables or {})
    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            add_generation_prompt=not continue_last,
            continue_final_message=continue_last,
            tokenize=False,
            **kwargs,
        )
    except Exception as exc:  # Jinja templates raise anything; the cause is the request.
        raise BadRequest(f"the model's chat template rejected the messages: {exc}") from None
