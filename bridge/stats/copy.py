"""Copying one state database into another (`bridge db copy`, e.g. SQLite -> PostgreSQL).

Safe to run again: rows already in the target (same model, backend and endpoint; same key hash)
are kept as they are, and each request record gets a `rid` derived from the source and its id,
so a second copy adds nothing.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from bridge.stats.database import Database, bump
from bridge.stats.schema import api_keys, backends, requests

COPY_CHUNK = 5_000  # request records per transaction when copying a database


def copy_database(source: Database, target: Database) -> dict[str, int]:
    """Copy every backend row, key and request record of `source` into `target`; returns the
    counts copied."""
    counts = _copy_registry(source, target)
    counts["requests"] = _copy_requests(source, target)
    return counts


def _copy_registry(source: Database, target: Database) -> dict[str, int]:
    """The backend rows and API keys the target lacks, in one transaction."""
    counts = {"backends": 0, "api_keys": 0, "requests": 0}
    with source._read(scan=True) as src:
        src_rows = [dict(r) for r in src.execute(sa.select(backends)).mappings()]
        src_keys = [dict(r) for r in src.execute(sa.select(api_keys)).mappings()]
    with target._write() as conn:
        have = {(r.model_key, r.backend_type, r.endpoint_url or "")
                for r in conn.execute(sa.select(backends))}
        for row in src_rows:
            if (row["model_key"], row["backend_type"], row["endpoint_url"] or "") not in have:
                conn.execute(sa.insert(backends).values(
                    {k: v for k, v in row.items() if k != "id"}))
                counts["backends"] += 1
        hashes = set(conn.execute(sa.select(api_keys.c.key_hash)).scalars())
        for key in src_keys:
            if key["key_hash"] not in hashes:
                conn.execute(sa.insert(api_keys).values(
                    {k: v for k, v in key.items() if k != "id"}))
                counts["api_keys"] += 1
        bump(conn)
    return counts


def _copy_requests(source: Database, target: Database) -> int:
    """The request records the target lacks, COPY_CHUNK per transaction; returns how many."""
    tag = hashlib.sha256(source.name.encode()).hexdigest()[:12]
    after, copied = 0, 0
    while True:
        with source._read(scan=True) as src:
            chunk = [dict(r) for r in src.execute(
                sa.select(requests).where(requests.c.id > after).order_by(requests.c.id)
                .limit(COPY_CHUNK)).mappings()]
        if not chunk:
            return copied
        after = chunk[-1]["id"]
        for r in chunk:
            r["rid"] = r.get("rid") or f"copy-{tag}-{r['id']}"
            del r["id"]
        with target._write() as conn:
            have_rids = set(conn.execute(sa.select(requests.c.rid).where(
                requests.c.rid.in_([r["rid"] for r in chunk]))).scalars())
            new = [r for r in chunk if r["rid"] not in have_rids]
            if new:
                conn.execute(sa.insert(requests), new)
        copied += len(new)
