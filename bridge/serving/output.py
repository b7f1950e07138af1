"""What a job's output holds besides plain text: reasoning, tool calls, a grammar to follow.

The request thread decides (OutputPlan); the engine thread reports the model's own markers and
whether the rendered prompt already opened a think block (OutputProbe, filled by a logits
processor before the first token is sampled, so it is set once the first event arrives); the
request thread then splits the streamed text (OutputParser).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bridge.engine.jobs import TokenLogprob
from bridge.engine.structured import Constraint, TokenizerTables, grammar_for, mask
from bridge.errors import BadRequest
from bridge.serving.thinking import ThinkingSplitter
from bridge.serving.toolcalls import ToolCallExtractor, ToolFormat, forced_call_schema

DEFAULT_THINK = ("<think>", "</think>")
_TAIL = 64  # prompt tokens decoded to find an open think block when the markers are multi-token


@dataclass
class Traits:
    """The model's output markers as mlx-lm's TokenizerWrapper knows them."""

    think_start: str | None = None
    think_end: str | None = None
    think_start_ids: tuple[int, ...] = ()
    think_end_ids: tuple[int, ...] = ()
    tools: ToolFormat = field(default_factory=ToolFormat)
    prompt_in_think: bool = False


@dataclass
class OutputProbe:
    """Written once on the engine thread, read on the request thread after the first event."""

    traits: Traits | None = None


@dataclass
class Delta:
    """One step of parsed output."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens behind this step

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls or self.logprobs)


@dataclass
class OutputPlan:
    """For one request: split reasoning out? parse tools? enforce a grammar?"""

    think: bool = False
    tools: list[dict[str, Any]] | None = None
    grammar: str | None = None
    forced: bool = False  # the grammar is a required tool call (forced_call_schema)
    probe: OutputProbe = field(default_factory=OutputProbe)

    @property
    def needed(self) -> bool:
        return bool(self.think or self.tools or self.grammar)

    def factory(self, tables: TokenizerTables) -> ProcessorFactory | None:
        """The PromptSpec.logits_processor_factory for this plan (None when nothing to do)."""
        if not self.needed:
            return None
        return ProcessorFactory(self, tables)

    def parser(self) -> OutputParser:
        return OutputParser(self, self.probe.traits or Traits())


class ProcessorFactory:
    """Makes a job's logits processor on the engine thread (PromptSpec.logits_processor_factory).

    The grammar's matcher can be made beforehand on the request thread (`prepare`): llguidance
    builds it without the GIL, in up to a quarter second for a large enum, which the engine
    thread then no longer spends while every stream waits.
    """

    def __init__(self, plan: OutputPlan, tables: TokenizerTables) -> None:
        self.plan, self.tables = plan, tables
        self._prepared: tuple[Any, Constraint] | None = None  # (for this tokenizer, matcher)

    def prepare(self, tokenizer: Any) -> None:
        """Request thread: the matcher for `tokenizer` now (a grammar it refuses: a 400)."""
        if self.plan.grammar:
            self._prepared = (tokenizer, Constraint(self.tables, tokenizer, self.plan.grammar))

    def __call__(self, tokenizer: Any) -> JobProcessor:
        plan, constraint = self.plan, None
        if plan.grammar:
            prepared, self._prepared = self._prepared, None
            if prepared is not None and prepared[0] is tokenizer:
                constraint = prepared[1]
            else:  # another tokenizer object than the request thread had (or none was made)
                constraint = Constraint(self.tables, tokenizer, plan.grammar)
        return JobProcessor(plan.probe, traits_of(tokenizer), constraint, plan.think, tokenizer)


def plan_output(think: bool | str | None, capabilities: list[str], tools: list[dict] | None,
                fmt: str | dict | None, forced: list[str] | None = None) -> OutputPlan:
    """Thinking models think unless told not to (Ollama's default); levels mean on.

    `forced`: tool names one of which the output must call (a grammar makes it so).
    """
    thinks = "thinking" in capabilities and think is not False
    if forced:
        if fmt is not None:
            raise BadRequest("a required tool call cannot be combined with a response format")
        fmt = forced_call_schema(tools or [], forced)
    grammar = None if fmt is None else grammar_for(fmt)  # `{}` too: any JSON object
    return OutputPlan(think=thinks, tools=tools or None, grammar=grammar, forced=bool(forced))


def traits_of(tokenizer: Any) -> Traits:
    """Markers and tool format from mlx-lm's TokenizerWrapper (engine thread)."""
    return Traits(
        think_start=getattr(tokenizer, "think_start", None),
        think_end=getattr(tokenizer, "think_end", None),
        think_start_ids=tuple(getattr(tokenizer, "think_start_tokens", None) or ()),
        think_end_ids=tuple(getattr(tokenizer, "think_end_tokens", None) or ()),
        tools=ToolFormat(getattr(tokenizer, "tool_call_start", None),
                         getattr(tokenizer, "tool_call_end", None),
                         getattr(tokenizer, "tool_parser", None)),
    )


class JobProcessor:
    """An mlx-lm logits processor: fills the probe, then applies the grammar (if any).

    With thinking on, the grammar starts after the think block: the first token may open one
    (single-token markers), and inside it anything but EOS goes until the closing marker.
    """

    def __init__(self, probe: OutputProbe, traits: Traits, constraint: Constraint | None,
                 think: bool, tokenizer: Any) -> None:
        self.probe, self.traits, self.constraint = probe, traits, constraint
        self.think, self.tokenizer = think, tokenizer
        self.seen = -1
        self.state = "grammar"
        self.eos = sorted(tokenizer.eos_token_ids)

    def __call__(self, tokens: Any, logits: Any) -> Any:
        if self.seen < 0:
            self._first(tokens)
        elif self.constraint is None:
            return logits  # nothing to enforce: no need to look at the tokens
        else:
            for token in tokens[self.seen:].tolist():
                self._consume(int(token))
        self.seen = int(tokens.shape[0])
        if self.constraint is None:
            return logits
        return mask(logits, self._allowed(int(logits.shape[-1])))

    def _first(self, tokens: Any) -> None:
        inside = self.think and _opens_think(tokens, self.traits, self.tokenizer)
        self.probe.traits = replace(self.traits, prompt_in_think=inside)
        single = len(self.traits.think_start_ids) == 1 and len(self.traits.think_end_ids) == 1
        if inside and self.traits.think_end_ids:
            self.state = "thinking"
        elif self.think and single:
            self.state = "open"

    def _consume(self, token: int) -> None:
        t = self.traits
        if self.state == "open":
            if (token,) == t.think_start_ids:
                self.state = "thinking"
                return
            self.state = "grammar"
        elif self.state == "thinking":
            if token in t.think_end_ids[-1:]:
                self.state = "grammar"
            return
        assert self.constraint is not None
        self.constraint.consume(token)

    def _allowed(self, width: int) -> Any:
        assert self.constraint is not None
        if self.state == "thinking":
            import numpy as np

            allowed = np.ones(width, dtype=bool)
            allowed[[e for e in self.eos if e < width]] = False  # the answer must still follow
            return allowed
        allowed = self.constraint.allowed(width)
        if self.state == "open":
            allowed[self.traits.think_start_ids[0]] = True
        return allowed


def _opens_think(tokens: Any, traits: Traits, tokenizer: Any) -> bool:
    """Does the prompt end inside a think block (a template that starts the reasoning)?"""
    if traits.think_start_ids and traits.think_end_ids:
        ids = tokens.tolist()
        return _rfind(ids, traits.think_start_ids) > _rfind(ids, traits.think_end_ids)
    start, end = traits.think_start or DEFAULT_THINK[0], traits.think_end or DEFAULT_THINK[1]
    tail = tokenizer.decode(tokens[-_TAIL:].tolist())
    return tail.rfind(start) > tail.rfind(end) if start in tail else False


def _rfind(ids: list[int], seq: tuple[int, ...]) -> int:
    n = len(seq)
    for i in range(len(ids) - n, -1, -1):
        if tuple(ids[i:i + n]) == seq:
            return i
    return -1


class OutputParser:
    """Request thread: streamed text -> Deltas of content, thinking and whole tool calls."""

    def __init__(self, plan: OutputPlan, traits: Traits) -> None:
        self.splitter = None
        if plan.think:
            start = traits.think_start or DEFAULT_THINK[0]
            end = traits.think_end or DEFAULT_THINK[1]
            self.splitter = ThinkingSplitter(start, end, traits.prompt_in_think)
        self.tools = (ToolCallExtractor(traits.tools, plan.tools, plan.forced)
                      if plan.tools else None)

    def feed(self, text: str) -> Delta:
        return self._route(self.splitter.feed(text) if self.splitter else None, text, last=False)

    def flush(self) -> Delta:
        return self._route(self.splitter.flush() if self.splitter else None, "", last=True)

    def _route(self, split: Any, text: str, last: bool) -> Delta:
        content, thinking = (split.content, split.thinking) if split is not None else (text, "")
        if self.tools is None:
            return Delta(content, thinking)
        content, calls = self.tools.feed(content)
        if last:
            rest, more = self.tools.flush()
            content, calls = content + rest, calls + more
        return Delta(content, thinking, calls)

