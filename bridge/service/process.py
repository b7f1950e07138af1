"""The server as a background process: PID file, state file and log in $MLX_BRIDGE_HOME.

`start` launches `python -m bridge serve ... --log-file` in its own session; `stop` sends SIGTERM
(gunicorn stops accepting and drains for the grace period) and cleans up. A PID file whose process
is gone, or cannot be proven to be this state dir's bridge (its command line), is stale and
removed; that process is never signalled. No flask or mlx imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from bridge.config import Config
from bridge.errors import BridgeError
from bridge.service.logtail import tail
from bridge.service.portinfo import Holder, command_line, find_listener, port_in_use

STOP_MARGIN = 10.0  # after the grace period: gunicorn's own margin plus engine shutdown


class ServiceError(BridgeError):
    """A service operation failed; the message says what to do."""


@dataclass(frozen=True)
class ServicePaths:
    """Where the background server keeps its files."""

    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "mlx-bridge.pid"

    @property
    def state_file(self) -> Path:
        return self.home / "service.json"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"


@dataclass
class ServiceState:
    """What `start` recorded about the process it launched."""

    pid: int
    url: str
    bind: str
    started_at: float
    log_file: str
    grace: float
    argv: list[str] = field(default_factory=list)


@dataclass
class Lookup:
    """The result of reading the PID file: a live server, or why there is none."""

    state: ServiceState | None
    stale_pid: int | None = None  # set when a stale PID file was found and removed


def pid_alive(pid: int) -> bool:
    """True for a running (not zombie) process."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that already exited
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_bridge(pid: int, home: Path, argv: list[str] | None = None) -> bool:
    """True only when `pid` provably is this state dir's server, so a recycled PID is never
    signalled: its command line is the one `start` recorded, or runs `-m bridge serve` with
    `--home <home>`. A command line that cannot be read proves nothing."""
    cmd = command_line(pid)
    if not cmd:
        return False
    if argv and cmd == " ".join(argv):
        return True
    padded = f" {cmd} "
    return " -m bridge serve " in padded and f" --home {home.resolve()} " in padded


def lookup(paths: ServicePaths) -> Lookup:
    """The running server started from this state dir; stale files are removed."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except FileNotFoundError:
        return Lookup(None)
    except (OSError, ValueError):
        pid = -1
    if pid > 0 and pid_alive(pid):
        state = _read_state(paths, pid)
        if is_bridge(pid, paths.home, state.argv):
            return Lookup(state)
    clear(paths)
    return Lookup(None, stale_pid=pid)


def _read_state(paths: ServicePaths, pid: int) -> ServiceState:
    try:
        data = json.loads(paths.state_file.read_text())
        state = ServiceState(**data)
    except (OSError, ValueError, TypeError):
        return ServiceState(pid, "", "", 0.0, str(paths.log_file), 0.0)
    state.pid = pid
    return state


@contextlib.contextmanager
def exclusive(paths: ServicePaths) -> Iterator[None]:
    """Serialise start/restart for one state dir (two racing starts would clobber the PID file)."""
    import fcntl  # POSIX only, like the rest of this module

    paths.home.mkdir(parents=True, exist_ok=True)
    with open(paths.home / ".service.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def clear(paths: ServicePaths) -> None:
    for path in (paths.pid_file, paths.state_file):
        path.unlink(missing_ok=True)


def serve_argv(config: Config, log_file: Path, grace: float, *, mappings_given: bool = False,
               demo: bool | None = None) -> list[str]:
    """The `serve` command line reproducing `config` (absolute paths: the child runs elsewhere).

    The mapping file is passed only when the user chose one: `serve` then skips the demo import,
    as it would in the foreground.
    """
    argv = [sys.executable, "-m", "bridge", "serve", "--host", config.host.bind,
            "--home", str(config.home.resolve()), "--log-file", str(log_file),
            "--grace", f"{grace:g}"]
    if mappings_given and config.mappings_path:
        argv += ["--mappings", str(config.mappings_path.resolve())]
    if demo is not None:
        argv.append("--demo" if demo else "--no-demo")
    if config.upstream:
        argv += ["--upstream", config.upstream]
    if config.verbose:
        argv.append("-v")
    return argv


def check_port(config: Config) -> None:
    """Raise ServiceError naming the holder when the port is taken."""
    host, port = config.host.host, config.host.port
    if not port_in_use(host, port):
        return
    holder = find_listener(port)
    who = _describe_holder(holder, config.host.url)
    raise ServiceError(f"port {port} is already in use by {who}; stop it or choose another --port")


def _describe_holder(holder: Holder | None, url: str) -> str:
    if holder is None:
        return "another process (could not tell which: try `lsof -i` or `ss -ltnp`)"
    if probe_health(url) is not None:
        return (f"mlx-bridge {holder} (not started from this state dir: "
                "check --home, launchd or systemd)")
    return str(holder)


def launch(paths: ServicePaths, argv: list[str], url: str, bind: str, grace: float,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], ServiceState]:
    """Start the server detached and record it; early output goes to the log too."""
    paths.log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.log_file, "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen(argv, stdin=null, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=paths.home, env=env)
    state = ServiceState(proc.pid, url, bind, time.time(), str(paths.log_file), grace, argv)
    paths.pid_file.write_text(f"{proc.pid}\n")
    paths.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")
    return proc, state


def wait_ready(proc: subprocess.Popen[bytes], state: ServiceState, timeout: float,
               paths: ServicePaths) -> None:
    """Block until /health says the engine runs; on failure clean up and show the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            clear(paths)
            raise ServiceError(f"the server exited with status {proc.returncode}; last log lines:\n"
                               + "".join(tail(paths.log_file, 15)))
        health = probe_health(state.url)
        if health and health.get("engine", {}).get("state") == "running":
            return
        time.sleep(0.2)
    raise ServiceError(f"the server (pid {proc.pid}) did not become ready in {timeout:g}s; "
                       f"see {paths.log_file}")


def probe_health(url: str, timeout: float = 2.0) -> dict | None:
    """The bridge's /health body, or None when nothing bridge-like answers."""
    try:
        body = requests.get(url.rstrip("/") + "/health", timeout=timeout).json()
    except (requests.RequestException, ValueError):
        return None
    return body if isinstance(body, dict) and "engine" in body else None


def stop(paths: ServicePaths, timeout: float | None = None) -> tuple[int | None, bool]:
    """SIGTERM and wait; SIGKILL the group after the grace period. Returns (pid, forced)."""
    found = lookup(paths)
    if found.state is None:
        return None, False
    pid = found.state.pid
    limit = timeout if timeout is not None else (found.state.grace or 30.0) + STOP_MARGIN
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    forced = not _wait_gone(pid, limit)
    if forced and is_bridge(pid, paths.home, found.state.argv) and _leads_group(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # `start` made it a session leader: its worker too
        _wait_gone(pid, 5.0)
    clear(paths)
    return pid, forced


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def upstream_reachable(url: str, timeout: float = 2.0) -> bool:
    """True when something Ollama-like answers GET /api/version."""
    try:
        return requests.get(url.rstrip("/") + "/api/version", timeout=timeout).ok
    except requests.RequestException:
        return False
