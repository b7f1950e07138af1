"""`mlx-bridge run`: one prompt, or an interactive chat that streams replies and keeps history."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bridge.cli.client import Client, ClientError

HELP = """Available commands:
  /clear          forget the conversation so far
  /bye            exit (Ctrl+d works too)
  /?, /help       this help
Use \"\"\" to begin and end a multi-line message.
"""
PROMPT = ">>> "
CONTINUATION = "... "


@dataclass
class Chat:
    """A conversation with one model; `send` streams the reply to `out` and records both turns."""

    client: Client
    model: str
    out: TextIO
    keep_alive: str | None = None
    verbose: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)

    def send(self, text: str) -> bool:
        """Stream one reply; on Ctrl+C or an error the turn is dropped. Returns success."""
        turn = [*self.messages, {"role": "user", "content": text}]
        body: dict[str, Any] = {"model": self.model, "messages": turn, "stream": True}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        reply, final = [], {}
        try:
            for line in self.client.stream("/api/chat", body):
                piece = line.get("message", {}).get("content", "")
                if piece:
                    reply.append(piece)
                    self.out.write(piece)
                    self.out.flush()
                if line.get("done"):
                    final = line
        except KeyboardInterrupt:
            self.out.write("\n")
            return False
        self.out.write("\n" if reply and reply[-1].endswith("\n") else "\n\n")
        if self.verbose:
            self.out.write(format_stats(final))
        self.messages = [*turn, {"role": "assistant", "content": "".join(reply)}]
        return True

    def load(self) -> None:
        """Load the model before the first prompt (an empty chat), as `ollama run` does."""
        body: dict[str, Any] = {"model": self.model, "messages": [], "stream": False}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        self.client.post("/api/chat", body)


def repl(chat: Chat, read: Callable[[str], str] = input, history: Path | None = None) -> None:
    """Read messages until /bye or end of input; Ctrl+C abandons the current line or reply."""
    with _readline_history(history):
        while True:
            try:
                text = _read_message(read)
            except EOFError:
                chat.out.write("\n")
                return
            except KeyboardInterrupt:
                chat.out.write("\nUse Ctrl + d or /bye to exit.\n")
                continue
            if text is None:
                continue
            command = text.strip()
            if command in ("/bye", "/exit"):
                return
            if command in ("/?", "/help"):
                chat.out.write(HELP)
            elif command == "/clear":
                chat.messages.clear()
                chat.out.write("Cleared session context\n")
            elif command.startswith("/"):
                chat.out.write(f"Unknown command '{command.split()[0]}'. Type /? for help\n")
            else:
                try:
                    chat.send(text)
                except ClientError as exc:
                    chat.out.write(f"Error: {exc.message}\n")


def _read_message(read: Callable[[str], str]) -> str | None:
    """One message; a line starting with \"\"\" continues until a line ending with \"\"\"."""
    line = read(PROMPT)
    if not line.strip():
        return None
    stripped = line.lstrip()
    if not stripped.startswith('"""'):
        return line
    parts = [stripped[3:]]
    if parts[0].strip() and parts[0].rstrip().endswith('"""'):  # """all on one line"""
        return parts[0].rstrip()[:-3]
    while True:
        more = read(CONTINUATION)
        if more.rstrip().endswith('"""'):
            parts.append(more.rstrip()[:-3])
            return "\n".join(parts).strip("\n")
        parts.append(more)


@contextlib.contextmanager
def _readline_history(path: Path | None):  # type: ignore[no-untyped-def]
    """Arrow-key editing and history for input(), kept in `path` between sessions."""
    try:
        import readline
    except ImportError:  # Windows: plain input()
        yield
        return
    if path is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(path)
    try:
        yield
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(path)


def format_stats(final: dict[str, Any]) -> str:
    """Timing lines like `ollama run --verbose`.

    >>> stats = {"total_duration": 2_000_000_000, "eval_count": 10, "eval_duration": 500_000_000}
    >>> print(format_stats(stats), end="")
    total duration:       2.000s
    eval count:           10 token(s)
    eval duration:        500.000ms
    eval rate:            20.00 tokens/s
    """
    rows = []

    def add(label: str, value: str) -> None:
        rows.append(f"{label + ':':<22}{value}\n")

    for key, label in (("total_duration", "total duration"), ("load_duration", "load duration")):
        if key in final:
            add(label, _duration(final[key]))
    for prefix, label in (("prompt_eval", "prompt eval"), ("eval", "eval")):
        count, ns = final.get(f"{prefix}_count"), final.get(f"{prefix}_duration")
        if count is not None:
            add(f"{label} count", f"{count} token(s)")
        if ns:
            add(f"{label} duration", _duration(ns))
            if count:
                add(f"{label} rate", f"{count / (ns / 1e9):.2f} tokens/s")
    return "".join(rows)


def _duration(ns: int) -> str:
    seconds = ns / 1e9
    return f"{seconds:.3f}s" if seconds >= 1 else f"{seconds * 1000:.3f}ms"
