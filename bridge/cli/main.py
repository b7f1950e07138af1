"""The `mlx-bridge` command line: thin, delegates to the modules that do the work."""

from __future__ import annotations

from pathlib import Path

import click

from bridge import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlx-bridge")
def cli() -> None:
    """Ollama-compatible server: MLX models in-process, everything else forwarded to Ollama."""


@cli.command()
@click.option("--host", help="Bind address, any OLLAMA_HOST form "
                             "(default 127.0.0.1:11434; env MLX_BRIDGE_HOST).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (overrides the one in --host).")
@click.option("--mappings", type=click.Path(dir_okay=False),
              help="model_mappings.yaml (env MLX_BRIDGE_MAPPINGS).")
@click.option("--upstream",
              help="The real Ollama, e.g. http://127.0.0.1:11435 (env MLX_BRIDGE_UPSTREAM).")
@click.option("--home", type=click.Path(file_okay=False),
              help="State dir (env MLX_BRIDGE_HOME, default ~/.mlx-bridge).")
@click.option("-v", "--verbose", is_flag=True, default=None,
              help="Log every request and debug details.")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="Write logs here (rotated at 10 MB) instead of stderr.")
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds in-flight requests may run after SIGTERM.")
@click.option("--demo/--no-demo", default=None,
              help="Import the offline demo model smollm2:135m on first start "
                   "(env MLX_BRIDGE_DEMO; "
                   "default: on unless --mappings/MLX_BRIDGE_MAPPINGS is given).")
def serve(host: str | None, port: int | None, mappings: str | None, upstream: str | None,
          home: str | None, verbose: bool | None, log_file: str | None, grace: float,
          demo: bool | None) -> None:
    """Run the server in the foreground (gunicorn, one worker process)."""
    from bridge.cli.service import validated_config
    from bridge.http.server import serve as run_server

    config = validated_config(host, port, mappings, upstream, home, verbose)
    from bridge.config import mappings_given
    from bridge.importer import demo as demo_model

    if demo_model.wanted(demo, mappings_given(mappings)):
        demo_model.start_background_import(config.home)
    run_server(config, log_file=Path(log_file) if log_file else None, grace=grace)


def _register_subcommands() -> None:
    from bridge.cli import db as cli_db
    from bridge.cli import models as cli_models
    from bridge.cli import ollama_cmds as cli_client
    from bridge.cli import service as cli_service

    for module in (cli_service, cli_client, cli_models, cli_db):
        module.register(cli)


_register_subcommands()

