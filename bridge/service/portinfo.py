"""Who listens on a TCP port: `ss`, then /proc, then `lsof`; None when nothing can tell.

Pure standard library, no flask or mlx, so `start` and `doctor` can ask cheaply.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_SS_USER = re.compile(r'\("(?P<name>[^"]*)",pid=(?P<pid>\d+)')
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class Holder:
    """A process listening on a port."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def port_in_use(host: str, port: int) -> bool:
    """True when binding host:port fails because someone else has it (as gunicorn would bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def find_listener(port: int, methods: Iterable[str] = ("ss", "proc", "lsof")) -> Holder | None:
    """The process listening on `port`, by the first method that can tell."""
    finders: dict[str, Callable[[int], Holder | None]] = {
        "ss": _from_ss, "proc": _from_proc, "lsof": _from_lsof}
    for method in methods:
        try:
            holder = finders[method](port)
        except (OSError, subprocess.SubprocessError, ValueError):
            holder = None  # a tool that is missing or fails just does not know
        if holder is not None:
            return Holder(holder.pid, command_line(holder.pid) or holder.command)
    return None


def command_line(pid: int) -> str:
    """A process's command line ("" when it cannot be read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return " ".join(p.decode(errors="replace") for p in raw.split(b"\0") if p)
    except OSError:
        pass
    if shutil.which("ps"):
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip()
    return ""


def _from_ss(port: int) -> Holder | None:
    if not shutil.which("ss"):
        return None
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=5, check=True).stdout
    return parse_ss(out)


def parse_ss(output: str) -> Holder | None:
    """The first process named in `ss -ltnp` output.

    >>> parse_ss('LISTEN 0 128 127.0.0.1:11434 0.0.0.0:* users:(("ollama",pid=812,fd=3))')
    Holder(pid=812, command='ollama')
    >>> parse_ss('LISTEN 0 128 127.0.0.1:11434 0.0.0.0:*') is None
    True
    """
    m = _SS_USER.search(output)
    if m is None:
        return None
    return Holder(int(m.group("pid")), m.group("name"))


def _from_proc(port: int, proc: Path = Path("/proc")) -> Holder | None:
    inodes = set(listening_inodes(port, proc))
    if not inodes:
        return None
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return Holder(int(pid_dir.name), "")
    return None


def listening_inodes(port: int, proc: Path = Path("/proc")) -> list[str]:
    """Socket inodes listening on `port` according to /proc/net/tcp and tcp6."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (len(fields) > 9 and fields[3] == _LISTEN
                    and int(fields[1].rsplit(":", 1)[1], 16) == port):
                found.append(fields[9])
    return found


def _from_lsof(port: int) -> Holder | None:
    if not shutil.which("lsof"):
        return None
    out = subprocess.run(["lsof", "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"],
                         capture_output=True, text=True, timeout=10).stdout
    return parse_lsof(out)


def parse_lsof(output: str) -> Holder | None:
    """The first process in `lsof -Fpc` output.

    >>> parse_lsof("p812\\ncollama\\n")
    Holder(pid=812, command='ollama')
    """
    pid, name = None, ""
    for line in output.splitlines():
        if line.startswith("p") and pid is None:
            pid = int(line[1:])
        elif line.startswith("c") and pid is not None:
            name = line[1:]
            break
    if pid is None:
        return None
    return Holder(pid, name)
