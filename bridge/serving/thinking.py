"""Split streamed model text into reasoning (`thinking`) and answer (`content`) at think markers.

Pure text work on the request thread: the markers and whether the prompt already opened a
think block come from the engine (bridge.serving.output.OutputProbe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.serving.markers import partial_suffix

# A think level as a `reasoning_effort` template variable: gpt-oss (harmony) knows low, medium
# and high; "max" asks for the most there is.
EFFORT_VARIABLE = {"low": "low", "medium": "medium", "high": "high", "max": "high"}

# Marker pairs mlx-lm recognises as single tokens (tokenizer_utils._infer_thinking).
THINK_PAIRS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
)


def template_switches(think: bool | str | None, switches: tuple[str, ...]) -> dict[str, Any]:
    """The chat-template variables for a request's `think` (None: the template's default).

    `switches`: the reasoning variables the model's template reads (ModelDescription). A level
    turns thinking on; with `reasoning_effort` it also picks the effort. `enable_thinking` is
    always passed (a template that does not read it ignores it), as before levels existed.
    A template whose only switch is `reasoning_effort` cannot turn reasoning off: `think: false`
    asks it for the least, "low".

    >>> template_switches("max", ("enable_thinking", "reasoning_effort"))
    {'enable_thinking': True, 'reasoning_effort': 'high'}
    >>> template_switches(False, ("thinking",))
    {'enable_thinking': False, 'thinking': False}
    """
    if think is None:
        return {}
    on = think is not False
    out: dict[str, Any] = {"enable_thinking": on}
    if "thinking" in switches:
        out["thinking"] = on
    if "reasoning_effort" in switches:
        if isinstance(think, str):
            out["reasoning_effort"] = EFFORT_VARIABLE[think]
        elif not on and not {"enable_thinking", "thinking"} & set(switches):
            out["reasoning_effort"] = "low"
    return out


@dataclass
class Split:
    """One piece of output, separated."""

    thinking: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.thinking or self.content)


class ThinkingSplitter:
    """Streams text through a small state machine: before -> thinking -> content.

    `before`: only whitespace so far; the opening marker switches to `thinking`, anything else
    to `content`. `thinking` ends at the closing marker. Whitespace right after either marker is
    dropped, and whitespace before the closing marker too (as Ollama trims both parts).
    """

    def __init__(self, start: str, end: str, in_thinking: bool = False) -> None:
        self.start, self.end = start, end
        self.state = "thinking" if in_thinking else "before"
        self.buf = ""
        self.lstrip = in_thinking  # drop whitespace at the start of the current part

    def feed(self, text: str) -> Split:
        """Add text; returns what can be released now (a possible partial marker is held)."""
        self.buf += text
        out = Split()
        while True:
            progressed = getattr(self, f"_{self.state}")(out)
            if not progressed:
                return out

    def flush(self) -> Split:
        """The end of the output: release whatever is held."""
        out = Split()
        rest, self.buf = self.buf, ""
        if self.state == "thinking":
            out.thinking = self._strip(rest).rstrip()
        elif self.state == "content":
            out.content = self._strip(rest)
        else:  # only whitespace or a partial opening marker was seen
            out.content = rest.strip()
        return out

    def _before(self, out: Split) -> bool:
        stripped = self.buf.lstrip()
        if stripped.startswith(self.start):
            self.buf = stripped[len(self.start):]
            self.state, self.lstrip = "thinking", True
            return True
        if not stripped or self.start.startswith(stripped):
            return False  # still undecided
        self.state = "content"
        return True

    def _thinking(self, out: Split) -> bool:
        idx = self.buf.find(self.end)
        if idx >= 0:
            out.thinking += self._strip(self.buf[:idx]).rstrip()
            self.buf = self.buf[idx + len(self.end):]
            self.state, self.lstrip = "content", True
            return True
        # Hold back a possible partial closing marker and trailing whitespace (it may precede it).
        keep = len(self.buf) - partial_suffix(self.buf, self.end)
        ready = self._strip(self.buf[:keep])
        body = ready.rstrip()
        out.thinking += body
        self.buf = ready[len(body):] + self.buf[keep:]
        return False

    def _content(self, out: Split) -> bool:
        out.content += self._strip(self.buf)
        self.buf = ""
        return False

    def _strip(self, text: str) -> str:
        if self.lstrip:
            text = text.lstrip()
            self.lstrip = not text
        return text


def split_text(text: str, start: str, end: str, in_thinking: bool = False) -> Split:
    """Split a whole output at once.

    >>> split_text("<think> hmm, 2+2 </think>\\n\\n4", "<think>", "</think>")
    Split(thinking='hmm, 2+2', content='4')
    >>> split_text("plain answer", "<think>", "</think>")
    Split(thinking='', content='plain answer')
    >>> split_text("still thinking", "<think>", "</think>", in_thinking=True)
    Split(thinking='still thinking', content='')
    """
    splitter = ThinkingSplitter(start, end, in_thinking)
    first, last = splitter.feed(text), splitter.flush()
    return Split(first.thinking + last.thinking, first.content + last.content)
