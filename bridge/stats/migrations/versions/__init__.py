"""Alembic revision scripts, oldest first (see docs/registry.md, "Migrations")."""
