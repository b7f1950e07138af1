"""Alembic migrations of the state database (SQLite or PostgreSQL); run by `Store` on start."""
