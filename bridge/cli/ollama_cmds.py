"""`mlx-bridge` client commands for a running server: list, ps, show, run, pull, rm, stop."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click

from bridge.cli.client import Client, ClientError
from bridge.cli.progress import PullProgress, human_size
from bridge.cli.repl import Chat, repl
from bridge.config import load_config

FOREVER_YEARS = 20  # the ollama CLI shows "Forever" beyond this


@contextmanager
def _client_errors() -> Iterator[None]:
    """Show a ClientError as `Error: ...` and exit 1, like the ollama CLI."""
    try:
        yield
    except ClientError as exc:
        raise click.ClickException(exc.message) from None


def register(cli: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    for command in (list_models, ps, show, run, pull, rm):
        cli.add_command(command)


@click.command("list")
def list_models() -> None:
    """List the models the server has (NAME, ID, SIZE, MODIFIED)."""
    with _client_errors():
        models = Client().get("/api/tags").get("models", [])
    rows = [[m.get("name", ""), str(m.get("digest", ""))[:12], human_size(m.get("size", 0)),
             ago(m.get("modified_at"))] for m in models]
    click.echo(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


@click.command()
def ps() -> None:
    """List the loaded models (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL)."""
    with _client_errors():
        models = Client().get("/api/ps").get("models", [])
    rows = [[m.get("name", ""), str(m.get("digest", ""))[:12], human_size(m.get("size", 0)),
             processor(m.get("size", 0), m.get("size_vram", 0)), str(m.get("context_length", "")),
             until(m.get("expires_at"))] for m in models]
    click.echo(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))


@click.command()
@click.argument("model")
@click.option("--modelfile", "part", flag_value="modelfile", help="Show the Modelfile.")
@click.option("--template", "part", flag_value="template", help="Show the prompt template.")
@click.option("--parameters", "part", flag_value="parameters", help="Show the parameters.")
@click.option("-v", "--verbose", is_flag=True, help="Show every model_info entry.")
def show(model: str, part: str | None, verbose: bool) -> None:
    """Show a model's details, capabilities and parameters."""
    with _client_errors():
        info = Client().post("/api/show", {"model": model, "verbose": verbose})
    if part:
        click.echo(str(info.get(part, "")).rstrip("\n"))
        return
    click.echo(describe(info, verbose))


def describe(info: dict[str, Any], verbose: bool = False) -> str:
    """The sections `ollama show` prints."""
    details, model_info = info.get("details") or {}, info.get("model_info") or {}
    arch = model_info.get("general.architecture") or details.get("family", "")
    rows = [("architecture", arch), ("parameters", details.get("parameter_size", "")),
            ("context length", model_info.get(f"{arch}.context_length", "")),
            ("embedding length", model_info.get(f"{arch}.embedding_length", "")),
            ("quantization", details.get("quantization_level", ""))]
    sections = [("Model", [f"{k:<20}{v}" for k, v in rows if v not in ("", None)])]
    sections.append(("Capabilities", list(info.get("capabilities") or [])))
    parameters = str(info.get("parameters") or "").splitlines()
    sections.append(("Parameters", [p for p in parameters if p]))
    if verbose:
        sections.append(("Metadata", [f"{k:<40}{v}" for k, v in sorted(model_info.items())]))
    if info.get("license"):
        sections.append(("License", str(info["license"]).splitlines()[:2]))
    return "\n".join(f"  {title}\n" + "".join(f"    {line}\n" for line in lines)
                     for title, lines in sections if lines).rstrip("\n")


@click.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--keepalive", help="How long the model stays loaded afterwards (e.g. 5m, 0).")
@click.option("--verbose", is_flag=True, help="Show timings after each reply.")
def run(model: str, prompt: tuple[str, ...], keepalive: str | None, verbose: bool) -> None:
    """Run a prompt, or chat interactively when no prompt is given (/bye to quit)."""
    client = Client()
    chat = Chat(client, model, sys.stdout, keep_alive=keepalive, verbose=verbose)
    text = " ".join(prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped} {text}".strip() if text else piped.strip()
    with _client_errors():
        client.post("/api/show", {"model": model})  # 404 here beats a failed first message
        if text:
            if not chat.send(text):
                sys.exit(130)
            return
        chat.load()
        repl(chat, history=load_config().home / "history")


@click.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Allow an insecure registry (passed to the server).")
def pull(model: str, insecure: bool) -> None:
    """Download a model through the server, showing progress."""
    progress = PullProgress(sys.stdout, sys.stdout.isatty())
    body = {"model": model, "insecure": insecure, "stream": True}
    try:
        with _client_errors():
            for line in Client().stream("/api/pull", body):
                progress.update(line)
    finally:
        progress.close()


@click.command()
@click.argument("models", nargs=-1, required=True)
def rm(models: tuple[str, ...]) -> None:
    """Delete models."""
    client = Client()
    with _client_errors():
        for model in models:
            client.delete("/api/delete", {"model": model})
            click.echo(f"deleted '{model}'")


def unload_model(model: str) -> None:
    """`mlx-bridge stop MODEL`: unload it now (generate with keep_alive 0)."""
    with _client_errors():
        try:
            Client().post("/api/generate", {"model": model, "keep_alive": 0, "stream": False})
        except ClientError as exc:
            if exc.status == 404:
                raise ClientError(f"couldn't find model '{model}' to stop") from None
            raise


# --------------------------------------------------------------------------- formatting


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by at least three spaces.

    >>> print(table(["NAME", "ID"], [["a:latest", "123"]]))
    NAME        ID
    a:latest    123
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["    ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def processor(size: int, vram: int) -> str:
    """`100% CPU`, `100% GPU` or a split, as `ollama ps` shows it.

    >>> processor(10, 0), processor(10, 10), processor(10, 4)
    ('100% CPU', '100% GPU', '60%/40% CPU/GPU')
    """
    if not vram:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    cpu = round((size - vram) * 100 / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def parse_time(text: str | None) -> datetime | None:
    """RFC3339 with up to 9 fractional digits (Python 3.10's fromisoformat takes 6 and no Z)."""
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]:0<6}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _relative(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "a few seconds" if seconds >= 1 else "less than a second"


def ago(text: str | None, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    """`3 days ago` for an RFC3339 timestamp."""
    when = parse_time(text)
    return f"{_relative((now() - when).total_seconds())} ago" if when else ""


def until(text: str | None,
          now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> str:
    """`4 minutes from now`, `Forever`, or `Stopping...` (already expired)."""
    when = parse_time(text)
    if when is None:
        return ""
    left = (when - now()).total_seconds()
    if left > FOREVER_YEARS * 365 * 86400:
        return "Forever"
    return f"{_relative(left)} from now" if left > 0 else "Stopping..."
