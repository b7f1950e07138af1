"""Baseline: the schema the SQLite-only releases made (backends, requests).

Idempotent on purpose: a file from before alembic has these tables already (and no
alembic_version); they are kept as they are, rows and all, and only a missing column is added.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

# SQLite: INTEGER PRIMARY KEY is the rowid; PostgreSQL: a 64-bit identity for the request log
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "backends" not in tables:
        op.create_table(
            "backends",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model_name", sa.Text, nullable=False),
            sa.Column("model_key", sa.Text, nullable=False),
            sa.Column("backend_type", sa.Text, nullable=False),
            sa.Column("endpoint_url", sa.Text),
            sa.Column("mlx_model", sa.Text),
            sa.Column("enabled", sa.Integer, nullable=False, server_default="1"),
            sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
            sa.Column("max_tokens", sa.Integer),
            sa.Column("temperature_default", sa.Float),
            sa.Column("timeout_seconds", sa.Float),
            sa.Column("api_key_env", sa.Text),
            sa.Column("description", sa.Text, nullable=False, server_default=""),
            sa.Column("created_at", sa.Text, nullable=False),
            sa.Column("updated_at", sa.Text, nullable=False),
            sa.CheckConstraint("backend_type IN ('mlx', 'ollama', 'auto')",
                               name="backends_type"),
            sqlite_autoincrement=True,
        )
    elif "api_key_env" not in _columns(bind, "backends"):  # a file from the first release
        op.add_column("backends", sa.Column("api_key_env", sa.Text))
    # one row per (model, backend, endpoint): a duplicate would split its stats and failover slot
    op.create_index("backends_unique", "backends",
                    ["model_key", "backend_type", sa.text("COALESCE(endpoint_url, '')")],
                    unique=True, if_not_exists=True)
    if "requests" not in tables:
        op.create_table(
            "requests",
            sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
            sa.Column("ts", sa.Text, nullable=False),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("model_key", sa.Text, nullable=False),
            sa.Column("backend", sa.Text, nullable=False),
            sa.Column("endpoint", sa.Text),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
            sa.Column("eval_tokens", sa.BigInteger, nullable=False),
            sa.Column("cached_tokens", sa.BigInteger, nullable=False, server_default="0"),
            sa.Column("ttft_ms", sa.Float),
            sa.Column("latency_ms", sa.Float, nullable=False),
            sa.Column("tokens_per_sec", sa.Float),
            sa.Column("error", sa.Text),
            sa.Column("fallback_from", sa.Text),
            sqlite_autoincrement=True,
        )
    op.create_index("requests_by_model", "requests", ["model_key", "backend", "endpoint"],
                    if_not_exists=True)
    op.create_index("requests_by_ts", "requests", ["ts"], if_not_exists=True)


def _columns(bind: sa.engine.Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(bind).get_columns(table)}
