"""bridge.serving.markers.partial_suffix: the one "hold back a half-seen marker" rule."""

from __future__ import annotations

import pytest

from bridge.serving.markers import partial_suffix
from bridge.serving.thinking import ThinkingSplitter
from bridge.serving.toolcalls import ToolCallExtractor, ToolFormat, _json_parser


@pytest.mark.parametrize(("text", "marker", "want"), [
    ("", "</think>", 0),
    ("abc", "</think>", 0),
    ("abc<", "</think>", 1),
    ("abc</thin", "</think>", 6),
    ("abc</think>", "</think>", 0),  # a whole marker is not a partial one
    ("<<", "<<x", 2),
    ("a<", "<", 0),  # a one-character marker never waits
    ("xx<tool_", "<tool_call>", 6),
])
def test_partial_suffix(text: str, marker: str, want: int) -> None:
    assert partial_suffix(text, marker) == want


def test_partial_suffix_is_the_proper_prefix_rule_exhaustively() -> None:
    marker = "<ab<a>"
    for n in range(0, 9):
        for text in _strings("<ab>x", n):
            want = max((k for k in range(1, len(marker)) if text.endswith(marker[:k])), default=0)
            assert partial_suffix(text, marker) == want, text


def _strings(alphabet: str, n: int) -> list[str]:
    out = [""]
    for _ in range(min(n, 4)):
        out = [s + c for s in out for c in alphabet]
    return out


def test_thinking_and_tool_parsers_hold_back_split_markers() -> None:
    splitter = ThinkingSplitter("<think>", "</think>", in_thinking=True)
    first = splitter.feed("plan </th")
    assert first.thinking == "plan" and first.content == ""
    rest = splitter.feed("ink>answer")
    assert rest.thinking == "" and rest.content == "answer"

    parser = ToolCallExtractor(ToolFormat("<tool_call>", "</tool_call>", _json_parser), None)
    content, calls = parser.feed("Sure.<tool_")
    assert content == "Sure." and calls == []
    content, calls = parser.feed('call>{"name": "f", "arguments": {}}</tool_call>')
    assert content == "" and [c["function"]["name"] for c in calls] == ["f"]
