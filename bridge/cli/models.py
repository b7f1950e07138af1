"""`mlx-bridge` subcommands: model files (import GGUF files and Ollama-store models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class _Bar:
    """Renders importer progress: a line per stage, a byte progress bar while tensors convert."""

    def __init__(self) -> None:
        self.stage = ""
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            if total:
                self.bar = tqdm(total=total, desc=stage, unit="B", unit_scale=True,
                                unit_divisor=1024,
                                dynamic_ncols=True)
            else:
                click.echo(f"{stage}...", err=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command("import")
@click.argument("source")
@click.option("--name", help="Model name to serve it under "
                             "(default: the Ollama name or the file's stem).")
@click.option("--quantize", type=click.Choice(["auto", "none", "8", "4"]), default="auto",
              show_default=True,
              help="auto/none: float32 on Linux, float16 (bfloat16 for Gemma) on macOS; "
                   "8/4: MLX affine bits.")
@click.option("--home", type=click.Path(file_okay=False),
              help="State dir (env MLX_BRIDGE_HOME, default ~/.mlx-bridge).")
def import_command(source: str, name: str | None, quantize: str, home: str | None) -> None:
    """Import a GGUF file, or a model from the local Ollama store, as an MLX model."""
    from bridge.config import load_config
    from bridge.importer import ImportFailed, import_model

    config = load_config(home=home)
    bar = _Bar()
    try:
        result = import_model(source, config.home, name=name, quantize=quantize, progress=bar)
    except ImportFailed as exc:
        raise click.ClickException(exc.message) from None
    finally:
        bar.close()
    click.echo(f"imported '{result.name}' into {result.path} in {result.seconds:.1f}s")
    _warn_if_shadowed(result.name, config.mappings_path, Path(config.home))


def _warn_if_shadowed(name: str, mappings: Path | None, home: Path) -> None:
    """The user's mapping file wins over imports: say so when it maps the same name."""
    from bridge.routing.registry import MappingError, Registry

    try:
        entry = Registry(mappings, home).lookup(name)
    except MappingError:
        return
    if entry is not None and entry.origin == "mappings":
        click.echo(f"warning: {mappings} also maps '{name}'; that mapping is served instead",
                   err=True)


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    cli.add_command(import_command)
