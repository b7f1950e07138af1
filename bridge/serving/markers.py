"""Streaming text markers (`<think>`, `<tool_call>`...): how much of a buffer must wait."""

from __future__ import annotations


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`.

    A streaming parser holds those characters back: the next chunk may complete the marker.
    (The engine's stop strings use an incremental KMP scanner instead: bridge.engine.sink.)

    >>> partial_suffix("hello </th", "</think>"), partial_suffix("hello", "</think>")
    (4, 0)
    """
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
