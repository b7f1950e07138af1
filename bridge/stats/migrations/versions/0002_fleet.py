"""Fleet: several bridges on one database, API keys.

- backends: `protocol`, `remote_model`, `weight` (nullable; the routing work reads them);
- requests: `bridge_id` (who served), `api_key` (the key's name), `rid` (a unique id given when
  the record is made, so a batch written again after an outage is never stored twice);
- registry_version: one row whose counter every registry write bumps in the same transaction;
  each bridge compares it on every request and reloads its rows and keys when it moved;
- api_keys: hashed keys (sha256) with their per-key limits.

Revision ID: 0002_fleet
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_fleet"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

BACKEND_COLUMNS = (("protocol", sa.Text), ("remote_model", sa.Text), ("weight", sa.Float))
REQUEST_COLUMNS = (("bridge_id", sa.Text), ("api_key", sa.Text), ("rid", sa.Text))


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    for table, columns in (("backends", BACKEND_COLUMNS), ("requests", REQUEST_COLUMNS)):
        have = {c["name"] for c in inspector.get_columns(table)}
        for name, kind in columns:
            if name not in have:  # a development build may have added it without alembic
                op.add_column(table, sa.Column(name, kind))
    op.create_index("requests_rid", "requests", ["rid"], unique=True, if_not_exists=True)
    op.create_index("requests_by_key", "requests", ["api_key"], if_not_exists=True)
    version = op.create_table(
        "registry_version",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(version, [{"id": 1, "version": 1}])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("requests_per_minute", sa.Integer),
        sa.Column("tokens_per_minute", sa.Integer),
        sa.Column("max_streams", sa.Integer),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Text),
        sqlite_autoincrement=True,
    )
