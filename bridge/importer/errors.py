"""Import failures: one message the CLI prints as it is."""

from __future__ import annotations

from bridge.errors import BadRequest


class ImportFailed(BadRequest):
    """The source cannot be imported (unreadable, unsupported architecture or quantization)."""
