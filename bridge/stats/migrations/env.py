"""Alembic environment: always run by `bridge.stats.database.migrate` on a connection it hands in
(`config.attributes["connection"]`), never from an alembic.ini."""

from __future__ import annotations

from alembic import context


def run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


# alembic sets `context.config` while it runs this file; a plain import (the doctest
# collector walks every module) finds none and does nothing
if hasattr(context, "config"):
    run()
