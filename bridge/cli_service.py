"""`mlx-bridge` subcommands: service control (start/stop/status/logs, install-service, doctor)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
