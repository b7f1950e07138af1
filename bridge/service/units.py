"""Service definitions: a macOS LaunchAgent (from launchd/) and a Linux systemd user unit.

Rendering and validation are pure; `Installer` writes the file and runs launchctl/systemctl
through an injected runner, into an injectable directory, so tests never touch the real ones.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from bridge.config import Config
from bridge.routing.registry import KEY_ENV_PREFIX
from bridge.service.process import STOP_MARGIN, ServiceError, ServicePaths, serve_argv

LABEL = "com.mlx-bridge.server"
UNIT_NAME = "mlx-bridge.service"
TEMPLATE = Path(__file__).resolve().parents[2] / "launchd" / f"{LABEL}.plist"
# Settings worth freezing into the service's environment when they are set at install time.
PASSED_ENV = ("OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_NUM_PARALLEL",
              "OLLAMA_MAX_QUEUE", "OLLAMA_ORIGINS", "OLLAMA_MODELS", "OLLAMA_DEBUG",
              "MLX_BRIDGE_THREADS", "MLX_BRIDGE_READ_TIMEOUT", "MLX_BRIDGE_ADMIN_TOKEN",
              "MLX_BRIDGE_LOG_MAX_BYTES", "MLX_BRIDGE_DATABASE_URL", "MLX_BRIDGE_ID",
              "MLX_BRIDGE_REQUIRE_KEYS", "MLX_BRIDGE_LOG_BACKUPS", "MLX_BRIDGE_DEMO",
              "MLX_BRIDGE_BLAS", "MLX_BRIDGE_BLAS_THREADS", "MLX_BRIDGE_MAX_MODEL_BYTES",
              "OLLAMA_KV_CACHE_TYPE", "OLLAMA_CONTEXT_LENGTH", "HF_HOME", "HF_HUB_OFFLINE")
_SAFE_ARG = re.compile(r"[A-Za-z0-9_/.:=,@+-]+")

Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


@dataclass
class UnitSpec:
    """What either service manager needs to run the bridge."""

    argv: list[str]
    home: Path
    log_file: Path
    grace: float
    env: dict[str, str] = field(default_factory=dict)

    @property
    def stop_timeout(self) -> int:
        return int(self.grace + STOP_MARGIN)


def build_spec(config: Config, grace: float, environ: Mapping[str, str] | None = None, *,
               mappings_given: bool = True, demo: bool | None = None) -> UnitSpec:
    """The service's command line and environment for `config`."""
    environ = os.environ if environ is None else environ
    paths = ServicePaths(config.home.resolve())
    # A row's or mapping's api_key_env names a MLX_BRIDGE_KEY_* variable: the service needs it.
    env = {k: v for k, v in environ.items()
           if v and (k in PASSED_ENV or k.startswith(KEY_ENV_PREFIX))}
    env["MLX_BRIDGE_HOME"] = str(paths.home)
    env["PATH"] = environ.get("PATH") or "/usr/bin:/bin:/usr/sbin:/sbin"
    argv = serve_argv(config, paths.log_file, grace, mappings_given=mappings_given, demo=demo)
    return UnitSpec(argv, paths.home, paths.log_file, grace, env)


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The real runner: run and capture, never raise for a non-zero status."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- launchd


def render_plist(spec: UnitSpec, template: Path = TEMPLATE) -> bytes:
    """The LaunchAgent plist: template placeholders filled, ARGV spliced, environment merged."""
    try:
        text = template.read_text(encoding="utf-8")
    except OSError:
        raise ServiceError(f"LaunchAgent template missing: {template} (install from a source "
                           "checkout with `pip install -e .`)") from None
    values = {"LABEL": LABEL, "HOME_DIR": str(spec.home), "LOG_FILE": str(spec.log_file),
              "PATH": spec.env["PATH"], "EXIT_TIMEOUT": str(spec.stop_timeout)}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", escape(value))
    plist = plistlib.loads(text.encode("utf-8"))
    args = plist["ProgramArguments"]
    at = args.index("{{ARGV}}")
    plist["ProgramArguments"] = args[:at] + spec.argv + args[at + 1:]
    plist.setdefault("EnvironmentVariables", {}).update(spec.env)
    data = plistlib.dumps(plist)
    validate_plist(data)
    return data


def validate_plist(data: bytes) -> dict:
    """Parse and check a LaunchAgent plist; raises ServiceError naming the problem."""
    try:
        plist = plistlib.loads(data)
    except Exception as exc:  # plistlib raises several types for bad XML
        raise ServiceError(f"invalid plist: {exc}") from None
    args = plist.get("ProgramArguments")
    problems = [key for key in ("Label", "ProgramArguments", "RunAtLoad", "KeepAlive",
                                "StandardOutPath", "StandardErrorPath") if key not in plist]
    if not (isinstance(args, list) and args and all(isinstance(a, str) for a in args)):
        problems.append("ProgramArguments must be a non-empty list of strings")
    if any("{{" in str(v) for v in _walk(plist)):
        problems.append("unfilled {{placeholder}}")
    if problems:
        raise ServiceError("invalid LaunchAgent plist: " + ", ".join(problems))
    return plist


def _walk(value: object) -> list[object]:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (k, *_walk(v))]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


# --------------------------------------------------------------------------- systemd


def render_systemd(spec: UnitSpec) -> str:
    """A systemd user unit running the bridge in the foreground."""
    env = "".join(f"Environment={_quote(f'{k}={v}', expand=False)}\n"
                  for k, v in sorted(spec.env.items()))
    return f"""[Unit]
Description=mlx-bridge: Ollama-compatible server with MLX models in-process

[Service]
Type=simple
ExecStart={" ".join(_quote(a) for a in spec.argv)}
WorkingDirectory={_escape_specifiers(str(spec.home))}
{env}Restart=on-failure
RestartSec=5
# SIGTERM to gunicorn's master only; it drains the worker for the grace period.
KillMode=mixed
TimeoutStopSec={spec.stop_timeout}

[Install]
WantedBy=default.target
"""


def _escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")


def _quote(arg: str, expand: bool = True) -> str:
    r"""One systemd command-line word: specifiers and (in ExecStart) `$` escaped, quoted if needed.

    >>> _quote("/usr/bin/python"), _quote("a b"), _quote('50%"$'), _quote("$x", expand=False)
    ('/usr/bin/python', '"a b"', '"50%%\\"$$"', '"$x"')
    """
    text = _escape_specifiers(arg)
    if expand:
        text = text.replace("$", "$$")
    if _SAFE_ARG.fullmatch(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def verify_systemd(path: Path, runner: Runner = run_command) -> str | None:
    """Problems `systemd-analyze verify` finds in the unit ("" when clean; None without it)."""
    if not shutil.which("systemd-analyze"):
        return None
    # System mode: the user manager needs a login session that a build box may not have.
    result = runner(["systemd-analyze", "verify", str(path)])
    mentions = [line for line in (result.stdout + result.stderr).splitlines() if path.name in line]
    if result.returncode != 0 or mentions:
        return "\n".join(mentions) or (result.stderr.strip() or f"exit status {result.returncode}")
    return ""


# --------------------------------------------------------------------------- install


def write_private(path: Path, data: bytes) -> None:
    """Write `path` readable by its owner only from the first byte (it may hold the admin
    token): a new file created 0600, then renamed over the old one, whatever its mode was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a killed install; O_EXCL below never reuses a file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Installer:
    """Install or remove the service for one platform; every system command goes via `runner`."""

    platform: str = sys.platform
    target_dir: Path | None = None
    runner: Runner = run_command
    uid: int = field(default_factory=os.getuid)

    @property
    def kind(self) -> str:
        if self.platform == "darwin":
            return "launchd"
        if self.platform.startswith("linux"):
            return "systemd"
        raise ServiceError("install-service supports macOS (launchd) and Linux (systemd), "
                           f"not {self.platform}")

    @property
    def unit_path(self) -> Path:
        if self.kind == "launchd":
            directory = self.target_dir or Path("~/Library/LaunchAgents").expanduser()
            return directory / f"{LABEL}.plist"
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser())
        return (self.target_dir or config_home / "systemd" / "user") / UNIT_NAME

    def render(self, spec: UnitSpec) -> bytes:
        return render_plist(spec) if self.kind == "launchd" else render_systemd(spec).encode()

    def install(self, spec: UnitSpec) -> list[list[str]]:
        """Write the unit (mode 0600: it may hold the admin token) and load it; returns commands."""
        data, path = self.render(spec), self.unit_path
        existed = path.exists()
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, data)
        if self.kind == "systemd":
            problems = verify_systemd(path, self.runner)
            if problems:
                raise ServiceError(f"systemd-analyze verify rejected {path}:\n{problems}")
        return self._run_all(self.install_commands(path, existed))

    def uninstall(self) -> list[list[str]]:
        """Stop and unload the service, then delete its file; returns the commands run."""
        path = self.unit_path
        if not path.exists():
            return []
        ran = self._run_all(self.uninstall_commands(path)[:1])
        path.unlink()
        return ran + self._run_all(self.uninstall_commands(path)[1:])

    def install_commands(self, path: Path, existed: bool) -> list[list[str]]:
        if self.kind == "launchd":
            domain = f"gui/{self.uid}"
            return [["launchctl", "bootout", f"{domain}/{LABEL}"],
                    ["launchctl", "enable", f"{domain}/{LABEL}"],
                    ["launchctl", "bootstrap", domain, str(path)]]
        reload = ["systemctl", "--user", "daemon-reload"]
        if existed:  # `enable --now` would leave the old definition running
            return [reload, ["systemctl", "--user", "enable", UNIT_NAME],
                    ["systemctl", "--user", "restart", UNIT_NAME]]
        return [reload, ["systemctl", "--user", "enable", "--now", UNIT_NAME]]

    def uninstall_commands(self, path: Path) -> list[list[str]]:
        if self.kind == "launchd":
            return [["launchctl", "bootout", f"gui/{self.uid}/{LABEL}"]]
        return [["systemctl", "--user", "disable", "--now", UNIT_NAME],
                ["systemctl", "--user", "daemon-reload"]]

    def _run_all(self, commands: list[list[str]]) -> list[list[str]]:
        for argv in commands:
            result = self.runner(argv)
            # bootout / disable of something not loaded fails harmlessly
            tolerated = argv[1] == "bootout" or "disable" in argv
            if result.returncode != 0 and not tolerated:
                raise ServiceError(f"`{' '.join(argv)}` failed ({result.returncode}): "
                                   f"{(result.stderr or result.stdout).strip()}")
        return commands
