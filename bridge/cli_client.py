"""`mlx-bridge` subcommands: client commands against a running server (list, ps, show, run, pull, rm, stop)."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
