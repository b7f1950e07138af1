"""`mlx-bridge` subcommands: service control (start/stop/status/logs, install-service, doctor)."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from bridge.config import Config, load_config, mappings_given
from bridge.http.server import DEFAULT_GRACE
from bridge.routing.registry import MappingError, Registry
from bridge.service import process as service
from bridge.service.logtail import follow, tail
from bridge.service.process import ServiceError, ServicePaths

NOT_RUNNING = 3  # the LSB status code for "program is not running"
UNHEALTHY = 1


def server_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """serve's options, for the commands that start a server or describe one."""
    options = [
        click.option("--host", help="Bind address, any OLLAMA_HOST form (env MLX_BRIDGE_HOST)."),
        click.option("--port", type=click.IntRange(0, 65535),
                     help="Port (overrides the one in --host)."),
        click.option("--mappings", type=click.Path(dir_okay=False),
                     help="model_mappings.yaml (env MLX_BRIDGE_MAPPINGS)."),
        click.option("--upstream", help="The real Ollama (env MLX_BRIDGE_UPSTREAM)."),
        click.option("--home", type=click.Path(file_okay=False),
                     help="State dir (env MLX_BRIDGE_HOME, default ~/.mlx-bridge)."),
        click.option("-v", "--verbose", is_flag=True, default=None, help="Log every request."),
        click.option("--demo/--no-demo", default=None,
                     help="Import the demo model smollm2:135m on first start (as serve)."),
        click.option("--grace", type=click.FloatRange(0),
                     help="Seconds in-flight requests may run after a stop "
                          f"(default {DEFAULT_GRACE:g})."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def validated_config(host: str | None, port: int | None, mappings: str | None, upstream: str | None,
                     home: str | None, verbose: bool | None, demo: bool | None = None) -> Config:
    """serve's options as a Config, the mapping file checked (a clear CLI error if broken)."""
    config = load_config(host=host, port=port, mappings_path=mappings, upstream=upstream,
                         home=home, verbose=verbose)
    try:
        Registry(config.mappings_path, config.home)
    except MappingError as exc:
        raise click.ClickException(str(exc)) from None
    return config


def _paths(home: str | None) -> ServicePaths:
    return ServicePaths(load_config(home=home).home)


def _fail(exc: ServiceError) -> click.ClickException:
    return click.ClickException(exc.message)


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    from bridge.cli.units import doctor, install_service, uninstall_service

    for command in (start, stop, restart, status, logs, install_service, uninstall_service, doctor):
        cli.add_command(command)


@click.command()
@server_options
@click.option("--wait", type=click.FloatRange(1), default=120, show_default=True,
              help="Seconds to wait for the server to become ready.")
def start(wait: float, grace: float | None, **opts: Any) -> None:
    """Start the server in the background (PID file and log in the state dir)."""
    config = validated_config(**opts)
    _start(config, DEFAULT_GRACE if grace is None else grace, wait, None, opts)


def argv_for(config: Config, grace: float, opts: dict[str, Any]) -> list[str]:
    """The `serve` command line for these options (the mapping file only when one was chosen)."""
    return service.serve_argv(config, ServicePaths(config.home).log_file, grace,
                              mappings_given=mappings_given(opts.get("mappings")),
                              demo=opts.get("demo"))


def _start(config: Config, grace: float, wait: float, argv: list[str] | None,
           opts: dict[str, Any] | None = None) -> None:
    paths = ServicePaths(config.home)
    with service.exclusive(paths):
        _start_locked(config, paths, grace, wait, argv, opts)


def _start_locked(config: Config, paths: ServicePaths, grace: float, wait: float,
                  argv: list[str] | None, opts: dict[str, Any] | None) -> None:
    found = service.lookup(paths)
    if found.stale_pid is not None:
        click.echo(f"removed a stale PID file (pid {found.stale_pid} is not running)")
    if found.state is not None:
        click.echo(f"mlx-bridge is already running (pid {found.state.pid}) at {found.state.url}")
        return
    try:
        service.check_port(config)
        argv = argv or argv_for(config, grace, opts or {})
        proc, state = service.launch(paths, argv, config.host.url, config.host.bind, grace)
        service.wait_ready(proc, state, wait, paths)
    except ServiceError as exc:
        raise _fail(exc) from None
    click.echo(f"mlx-bridge started (pid {state.pid}) at {state.url}\nlogs: {paths.log_file}")


@click.command()
@click.argument("model", required=False)
@click.option("--home", type=click.Path(file_okay=False), help="State dir (env MLX_BRIDGE_HOME).")
@click.option("--timeout", type=click.FloatRange(0),
              help="Seconds to wait before killing (default: grace + 10).")
def stop(model: str | None, home: str | None, timeout: float | None) -> None:
    """Stop the background server gracefully; with MODEL, unload that model instead."""
    if model:
        from bridge.cli.ollama_cmds import unload_model

        unload_model(model)
        return
    paths = _paths(home)
    stale = service.lookup(paths).stale_pid
    if stale is not None:
        click.echo(f"removed a stale PID file (pid {stale} is not running)")
    pid, forced = service.stop(paths, timeout)
    if pid is None:
        click.echo("mlx-bridge is not running")
    elif forced:
        click.echo(f"mlx-bridge (pid {pid}) did not stop in time and was killed")
    else:
        click.echo(f"mlx-bridge stopped (pid {pid})")


@click.command()
@server_options
@click.option("--wait", type=click.FloatRange(1), default=120, show_default=True,
              help="Seconds to wait for the server to become ready.")
def restart(wait: float, grace: float | None, **opts: Any) -> None:
    """Stop, then start again: with the previous settings unless options are given."""
    config = validated_config(**opts)
    paths = ServicePaths(config.home)
    previous = service.lookup(paths).state
    fresh = grace is not None or any(v is not None for k, v in opts.items() if k != "home")
    service.stop(paths)
    if previous is None or not previous.argv or fresh:
        _start(config, DEFAULT_GRACE if grace is None else grace, wait, None, opts)
        return
    # same command line as before; host and home only for the port check and the PID file
    _start(load_config(host=previous.bind, home=str(config.home)), previous.grace, wait,
           previous.argv)


@click.command()
@click.option("--home", type=click.Path(file_okay=False), help="State dir (env MLX_BRIDGE_HOME).")
@click.option("--host", help="Address to probe when no PID file exists (env MLX_BRIDGE_HOST).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(home: str | None, host: str | None, as_json: bool) -> None:
    """Show pid, address, uptime, health, loaded models and upstream (exit 0 running and
    healthy, 1 running but not answering, 3 not running)."""
    config = load_config(home=home, host=host)
    info = collect_status(ServicePaths(config.home), config.host.url)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(format_status(info))
    sys.exit(0 if info["running"] and info["healthy"]
             else UNHEALTHY if info["running"] else NOT_RUNNING)


def collect_status(paths: ServicePaths, default_url: str) -> dict[str, Any]:
    """Everything `status` reports, as plain data."""
    found = service.lookup(paths)
    info: dict[str, Any] = {"running": False, "healthy": False, "stale_pid": found.stale_pid}
    state = found.state
    url = state.url if state and state.url else default_url
    health = service.probe_health(url)
    if state is None and health is None:
        return info
    info.update(running=True, managed=state is not None, url=url, healthy=health is not None,
                pid=state.pid if state else _holder_pid(url),
                uptime=time.time() - state.started_at if state and state.started_at else None,
                log_file=str(paths.log_file))
    if health is not None:
        upstream = health.get("backends", {}).get("ollama", {}).get("upstream")
        info.update(status=health.get("status"), engine=health.get("engine", {}),
                    loaded=health.get("loaded_models", []), upstream=upstream,
                    upstream_reachable=bool(upstream) and service.upstream_reachable(upstream))
    return info


def _holder_pid(url: str) -> int | None:
    from bridge.hosts import parse_host
    from bridge.service.portinfo import find_listener

    holder = find_listener(parse_host(url).port)
    return holder.pid if holder else None


def format_status(info: dict[str, Any]) -> str:
    """The human-readable status block."""
    lines = []
    if info.get("stale_pid") is not None:
        lines.append(f"removed a stale PID file (pid {info['stale_pid']} is not running)")
    if not info["running"]:
        return "\n".join([*lines, "mlx-bridge is not running"])
    how = ("" if info["managed"]
           else " (not started by `mlx-bridge start`: launchd, systemd or serve)")
    lines.append(f"mlx-bridge is running{how}")
    rows = [("pid", info.get("pid") or "unknown"), ("address", info["url"])]
    if info.get("uptime") is not None:
        rows.append(("uptime", duration(info["uptime"])))
    if not info["healthy"]:
        rows.append(("health", "NOT ANSWERING on /health"))
    else:
        engine = info["engine"]
        rows.append(("health", f"{info['status']} (engine {engine.get('state')}, "
                               f"{engine.get('queued', 0)} queued)"))
        loaded = ", ".join(m.get("model", "?") for m in info["loaded"]) or "none loaded"
        rows.append(("models", loaded))
        reach = "reachable" if info["upstream_reachable"] else "unreachable"
        rows.append(("upstream", f"{info['upstream']} ({reach})"))
    if info["managed"]:
        rows.append(("log", info["log_file"]))
    lines += [f"  {k + ':':<10}{v}" for k, v in rows]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """`2h 03m 04s`, `5m 01s`, `12s`.

    >>> duration(7384), duration(301), duration(12.5)
    ('2h 03m 04s', '5m 01s', '12s')
    """
    s = int(seconds)
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


@click.command()
@click.option("--home", type=click.Path(file_okay=False), help="State dir (env MLX_BRIDGE_HOME).")
@click.option("-f", "--follow", "follow_", is_flag=True,
              help="Keep printing new lines (Ctrl+C stops).")
@click.option("-n", "--lines", type=click.IntRange(0), default=50, show_default=True,
              help="Lines to show first.")
def logs(home: str | None, follow_: bool, lines: int) -> None:
    """Show the server log (also across rotations with -f)."""
    path = _paths(home).log_file
    if not path.exists() and not follow_:
        raise click.ClickException(f"no log yet at {path}")
    if not follow_:
        click.echo("".join(tail(path, lines)), nl=False)
        return

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is the normal way out
        follow(path, write, lines=lines, stop=threading.Event())
