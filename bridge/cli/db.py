"""`mlx-bridge db`: the state database (docs/registry.md) — migrate it, copy SQLite into
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bridge.config import load_config
from bridge.errors import BridgeError

# The state database's modules are imported in the commands: SQLAlchemy is 0.2 s of every
# `mlx-bridge` command's start otherwise.


def _target(url: str | None, home: str | None) -> str | Path:
    """The database a command works on: --database-url, MLX_BRIDGE_DATABASE_URL, else the
    SQLite file in the state directory."""
    from bridge.stats.store import DB_FILE

    config = load_config(home=home)
    return url or config.database_url or config.home / DB_FILE


def _same_database(source: str | Path, target: str | Path) -> bool:
    """Whether two targets name one database (a SQLite file by its resolved path), so that a copy
    without --to and without MLX_BRIDGE_DATABASE_URL fails instead of copying a file into itself."""
    def key(value: str | Path) -> str:
        text = str(value)
        if text.startswith("sqlite:///"):  # a SQLite URL names a file: compare the file
            text = text.removeprefix("sqlite:///")
        elif "://" in text:  # postgres:// and postgresql:// (+driver) name the same server
            scheme, rest = text.split("://", 1)
            return scheme.split("+")[0].replace("postgresql", "postgres") + "://" + rest
        return str(Path(text).expanduser().resolve())
    return key(source) == key(target)


@click.group("db")
def db_group() -> None:
    """The state database: backend rows, API keys, request records."""


@db_group.command("upgrade")
@click.option("--database-url", help="PostgreSQL URL (default: MLX_BRIDGE_DATABASE_URL, else "
                                     "the SQLite file in the state dir).")
@click.option("--home", type=click.Path(file_okay=False), help="State dir (env MLX_BRIDGE_HOME).")
def upgrade(database_url: str | None, home: str | None) -> None:
    """Run the migrations now (a server also runs them when it starts)."""
    from bridge.stats.database import schema_revision
    from bridge.stats.store import Store

    store = Store(_target(database_url, home))
    try:
        click.echo(json.dumps({"database": store.name, "revision": schema_revision(store),
                               "backends": len(store.list_rows())}))
    except BridgeError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        store.close()


@db_group.command("copy")
@click.option("--from", "source", required=True,
              help="The database to copy: a SQLite file (an old bridge.db is migrated first) or "
                   "a URL.")
@click.option("--to", "dest", help="Where to copy to (default: MLX_BRIDGE_DATABASE_URL).")
@click.option("--home", type=click.Path(file_okay=False), help="State dir (env MLX_BRIDGE_HOME).")
def copy(source: str, dest: str | None, home: str | None) -> None:
    """Copy backend rows, API keys and request records into another database (SQLite ->
    PostgreSQL). Running it again copies nothing twice."""
    from bridge.stats.copy import copy_database
    from bridge.stats.store import Store

    if not Path(source).exists() and "://" not in source:
        raise click.ClickException(f"no such database file: {source}")
    target = _target(dest, home)
    if _same_database(source, target):
        raise click.ClickException(
            f"--from and the target are the same database ({target}): pass --to, or set "
            "MLX_BRIDGE_DATABASE_URL to the database to copy into")
    src, dst = Store(source), Store(target)
    try:
        counts = copy_database(src, dst)
    except BridgeError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        src.close()
        dst.close()
    click.echo(json.dumps({"from": src.name, "to": dst.name, "copied": counts}))


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    cli.add_command(db_group)
