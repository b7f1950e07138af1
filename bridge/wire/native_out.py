"""Ollama's native stream shape for a failure: once the 200 and the first lines are sent, an error
can only be the stream's last line, `{"error": "..."}` (what the ollama clients raise on)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from bridge.errors import BridgeError


def error_line(message: str) -> dict[str, Any]:
    return {"error": message}


def errors_as_last_line(lines: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The lines, until a BridgeError: then one last `{"error": message}` line, and the end.

    Closing this generator closes `lines` (a client that went away cancels the work behind it).
    Other exceptions propagate: they are bugs, and the server logs them.
    """
    try:
        yield from lines
    except BridgeError as exc:
        yield error_line(exc.message)
