"""Fault injection helpers: read-only and full file systems, file size limits, worker RSS.

As root the real faults are used (a read-only bind mount, a small tmpfs); elsewhere the closest
thing an ordinary user can do (chmod, RLIMIT_FSIZE). A test that cannot set up a fault skips,
saying why, rather than passing without it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _writable(path: Path) -> bool:
    """Really try (root passes every permission check, so os.access says nothing)."""
    probe = path / f".probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only(path: Path, *, keep_children_writable: bool = False) -> Iterator[str]:
    """Make the directory `path` read-only; yields how ("chmod", "bind mount", "chattr +i").

    With keep_children_writable only `path` itself refuses new entries (its subdirectories
    stay writable), which a read-only bind mount cannot do.
    """
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield "chmod"
        finally:
            os.chmod(path, 0o755)
        return
    if not keep_children_writable and _run("mount", "--bind", str(path), str(path)):
        if _run("mount", "-o", "remount,bind,ro", str(path)) and not _writable(path):
            try:
                yield "bind mount"
            finally:
                _umount(path)
            return
        _umount(path)
    if _run("chattr", "+i", str(path)) and not _writable(path):
        try:
            yield "chattr +i"
        finally:
            _run("chattr", "-i", str(path))
        return
    _run("chattr", "-i", str(path))
    pytest.skip("running as root without mount or chattr: cannot make a directory read-only here")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    """Mount a tmpfs of `size` on the (empty) directory `path`: a real ENOSPC. Root only."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                     str(path)):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield
    finally:
        _umount(path)


def _umount(path: Path) -> None:
    for _ in range(50):  # a process that just exited may still hold a file there for a moment
        if _run("umount", str(path)):
            return
        time.sleep(0.1)
    _run("umount", "-l", str(path))


def limit_file_size(pid: int, limit: int) -> None:
    """RLIMIT_FSIZE (soft) for a running process: writes past `limit` bytes fail with EFBIG.

    Python ignores SIGXFSZ, so the write raises OSError instead of killing the process. The
    hard limit stays, so the soft one can be raised again (RLIM_INFINITY) without privileges.
    """
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def set_file_size_limit(limit: int) -> None:
    """preexec_fn for subprocesses: the same limit from the start."""
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))


def worker_pid(master_pid: int, timeout: float = 10) -> int:
    """The gunicorn worker of a `mlx-bridge serve` process (its only child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.1)
    raise AssertionError(f"no worker process under pid {master_pid}")


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def grow_tmpfs(path: Path, size: str) -> None:
    """Give a mounted tmpfs more room (the disk was freed)."""
    assert _run("mount", "-o", f"remount,size={size}", str(path))


def generate(url: str, model: str, **options: object) -> requests.Response:
    """A short greedy /api/generate (stream false)."""
    body = {"model": model, "prompt": "hello", "stream": False,
            "options": {"temperature": 0, "num_predict": 4, **options}}
    return requests.post(url + "/api/generate", json=body, timeout=60)


def assert_serves(url: str, model: str = "good") -> None:
    """The server answers a generation for `model`."""
    r = generate(url, model)
    assert r.status_code == 200 and r.json()["done"] is True, r.text
