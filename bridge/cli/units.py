"""`mlx-bridge` subcommands: install-service, uninstall-service and doctor."""

from __future__ import annotations

import sys
from typing import Any

import click

from bridge.cli.service import server_options, validated_config
from bridge.config import load_config, mappings_given
from bridge.http.server import DEFAULT_GRACE
from bridge.importer import demo as demo_model
from bridge.service import doctor as doctor_checks
from bridge.service.process import ServiceError
from bridge.service.units import Installer, build_spec


@click.command("install-service")
@server_options
@click.option("--dry-run", is_flag=True,
              help="Print the unit file and the commands; change nothing.")
def install_service(dry_run: bool, grace: float | None, **opts: Any) -> None:
    """Run the bridge at login: a LaunchAgent on macOS, a systemd user unit on Linux."""
    config = validated_config(**opts)
    given = mappings_given(opts.get("mappings"))
    spec = build_spec(config, DEFAULT_GRACE if grace is None else grace, mappings_given=given,
                      demo=opts.get("demo"))
    installer = Installer()
    try:
        if dry_run:
            path = installer.unit_path
            click.echo(f"# {path}\n{installer.render(spec).decode()}")
            for argv in installer.install_commands(path, path.exists()):
                click.echo("would run: " + " ".join(argv))
            return
        commands = installer.install(spec)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    for argv in commands:
        click.echo("ran: " + " ".join(argv))
    click.echo(f"installed {installer.unit_path}\nlogs: {spec.log_file}")
    if installer.kind == "systemd":
        click.echo("to keep it running after you log out: loginctl enable-linger $USER")


@click.command("uninstall-service")
def uninstall_service() -> None:
    """Stop the service and remove its LaunchAgent / systemd unit."""
    installer = Installer()
    try:
        commands = installer.uninstall()
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    if not commands:
        click.echo(f"no service installed ({installer.unit_path} does not exist)")
        return
    for argv in commands:
        click.echo("ran: " + " ".join(argv))
    click.echo(f"removed {installer.unit_path}")


@click.command()
@click.option("--host", help="The address the bridge should listen on (env MLX_BRIDGE_HOST).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (overrides the one in --host).")
@click.option("--mappings", type=click.Path(dir_okay=False),
              help="model_mappings.yaml (env MLX_BRIDGE_MAPPINGS).")
@click.option("--upstream", help="The real Ollama (env MLX_BRIDGE_UPSTREAM).")
@click.option("--home", help="State dir (env MLX_BRIDGE_HOME).")  # not validated: doctor checks it
def doctor(host: str | None, port: int | None, mappings: str | None, upstream: str | None,
           home: str | None) -> None:
    """Check the installation and print what to fix (exit 1 when something is broken)."""
    config = load_config(host=host, port=port, mappings_path=mappings, upstream=upstream, home=home)
    demo = demo_model.wanted(None, mappings_given(mappings))
    checks = doctor_checks.run_checks(config, demo_on_first_start=demo)
    click.echo(doctor_checks.format_report(checks, doctor_checks.use_color(sys.stdout)))
    sys.exit(1 if any(c.status == "fail" for c in checks) else 0)
