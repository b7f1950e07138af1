"""The state database's tables as SQLAlchemy Core objects, for queries (bridge/stats/store.py,
perf.py). The DDL itself is made by the alembic migrations (bridge/stats/migrations/); these
definitions follow the newest revision."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

backends = sa.Table(
    "backends", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_key", sa.Text, nullable=False),
    sa.Column("backend_type", sa.Text, nullable=False),
    sa.Column("endpoint_url", sa.Text),
    sa.Column("mlx_model", sa.Text),
    sa.Column("enabled", sa.Integer, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("max_tokens", sa.Integer),
    sa.Column("temperature_default", sa.Float),
    sa.Column("timeout_seconds", sa.Float),
    sa.Column("api_key_env", sa.Text),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
    sa.Column("protocol", sa.Text),
    sa.Column("remote_model", sa.Text),
    sa.Column("weight", sa.Float),
)

requests = sa.Table(
    "requests", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("ts", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("model_key", sa.Text, nullable=False),
    sa.Column("backend", sa.Text, nullable=False),
    sa.Column("endpoint", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("eval_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("tokens_per_sec", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("fallback_from", sa.Text),
    sa.Column("bridge_id", sa.Text),
    sa.Column("api_key", sa.Text),
    sa.Column("rid", sa.Text),
)

registry_version = sa.Table(
    "registry_version", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("requests_per_minute", sa.Integer),
    sa.Column("tokens_per_minute", sa.Integer),
    sa.Column("max_streams", sa.Integer),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("revoked_at", sa.Text),
)
