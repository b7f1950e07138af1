"""docs/registry.md's `mlx-bridge db copy --from ~/.mlx-bridge/bridge.db`, run as a user would:
without --to and without MLX_BRIDGE_DATABASE_URL the target is the state dir's own file, and the
command must say so (exit 1) instead of "copying" the file into itself and reporting success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLX_BRIDGE_DATABASE_URL"}
    env["MLX_BRIDGE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "bridge", *args], env=env, text=True,
                          capture_output=True, timeout=120)


def test_db_copy_onto_its_own_source_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _cli(home, "db", "upgrade").returncode == 0  # creates home/bridge.db
    done = _cli(home, "db", "copy", "--from", str(home / "bridge.db"))
    assert done.returncode == 1, done.stdout
    assert "same database" in done.stderr and "MLX_BRIDGE_DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_db_copy_with_to_still_copies(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _cli(home, "db", "upgrade").returncode == 0
    dest = tmp_path / "copy.db"
    done = _cli(home, "db", "copy", "--from", str(home / "bridge.db"), "--to", str(dest))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["to"] == str(dest)


def test_one_database_under_two_spellings_is_the_same():
    from pathlib import Path

    from bridge.cli.db import _same_database

    home = Path.home() / ".mlx-bridge" / "bridge.db"
    assert _same_database("~/.mlx-bridge/bridge.db", f"sqlite:///{home}")
    assert _same_database("postgres://u@h/db", "postgresql+psycopg://u@h/db")
    assert not _same_database("postgres://u@h/db", "postgres://u@h/other")
    assert not _same_database("/tmp/a.db", "/tmp/b.db")
