"""`mlx-bridge import`: resolve the source, convert into a temp dir, swap it in, register it."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge.importer.convert import (
    QUANTIZE_CHOICES,
    Progress,
    _no_progress,
    convert_gguf,
    quantize_dir,
)
from bridge.importer.errors import ImportFailed
from bridge.importer.ollama_meta import OllamaMeta
from bridge.importer.ollama_store import find_model, list_models, store_root
from bridge.routing.registry import (
    IMPORTED_DIR,
    LOCAL_MODELS_FILE,
    local_sources,
    register_local_model,
)
from bridge.wire.names import InvalidModelName, ModelName

log = logging.getLogger(__name__)

_DIR_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ImportResult:
    name: str
    path: Path
    source: str
    seconds: float


@dataclass(frozen=True)
class Source:
    """A GGUF file to import, where it came from, and the name it gets by default."""

    gguf: Path
    default_name: str
    provenance: dict[str, str]
    meta: OllamaMeta | None = None  # what the Ollama manifest knew besides the weights


def resolve_source(source: str, ollama_root: Path | None = None) -> Source:
    """A GGUF path, or the name of a model in the (read-only) Ollama store."""
    path = Path(os.path.expanduser(source))
    if path.is_file():
        return Source(path, name_from_stem(path.stem), {"source": str(path.resolve())})
    root = ollama_root or store_root()
    model = find_model(source, root)
    if model is None:
        known = list_models(root)
        hint = f"; the store has: {', '.join(known[:20])}" if known else ""
        raise ImportFailed(f"'{source}' is neither a GGUF file nor a model in the Ollama store "
                           f"at {root}{hint}")
    return Source(model.gguf, model.name, {"source": f"ollama:{model.name}",
                                           "ollama_manifest": str(model.manifest),
                                           "ollama_digest": model.digest},
                  OllamaMeta.from_layers(model.extras, model.name))


def name_from_stem(stem: str) -> str:
    """A valid model name from a file name: 'SmolLM2-135M-Instruct.Q4_1' stays as it is.

    >>> name_from_stem("My Model (v2)")
    'My-Model-v2:latest'
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "model"
    return ModelName.parse(cleaned[:80]).display


def slug(name: str) -> str:
    """Directory name for a model name: readable, plus a hash of the name's key, so names that
    differ only in '/', ':' or '-' never share a directory.

    >>> slug("smollm2:135m"), slug("hf.co/user/Repo:Q4_K_M")
    ('smollm2-135m-5d3dfca5', 'hf.co-user-repo-q4_k_m-d1660d16')
    >>> slug("team/coder:7b"), slug("team-coder:7b")
    ('team-coder-7b-5d66cd5b', 'team-coder-7b-bac9451d')
    """
    key = ModelName.parse(name).key
    return re.sub(r"[/:]+", "-", key) + "-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def target_dir(base: Path, home: Path, display: str) -> Path:
    """Where the import of `display` goes: the directory it already has, else a new one.

    A name imported before keeps its directory (older versions named it without the hash),
    unless another name is registered to that directory too; a directory registered to
    another name is never taken over.
    """
    sources = local_sources(home) if (home / LOCAL_MODELS_FILE).exists() else {}
    key = ModelName.parse(display).key
    owners: dict[str, list[str]] = {}
    for name_key, source in sources.items():
        owners.setdefault(source, []).append(name_key)
    previous = sources.get(key, "")
    folder, _, own = previous.partition("/")
    if folder == IMPORTED_DIR and _DIR_NAME.fullmatch(own) and owners[previous] == [key]:
        return base / own
    final = base / slug(display)
    others = [k for k in owners.get(f"{IMPORTED_DIR}/{final.name}", []) if k != key]
    if others:
        raise ImportFailed(f"{final} already holds the model '{others[0]}'; "
                           "import under another name")
    return final


def import_model(source: str, home: Path, *, name: str | None = None, quantize: str = "auto",
                 progress: Progress = _no_progress,
                 ollama_root: Path | None = None) -> ImportResult:
    """Import `source` into home/models/imported/<slug> and register it as `name`."""
    if quantize not in QUANTIZE_CHOICES:
        raise ImportFailed(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}")
    started = time.monotonic()
    src = resolve_source(source, ollama_root)
    try:
        display = ModelName.parse(name or src.default_name).display
    except InvalidModelName:
        raise ImportFailed(f"invalid model name '{name}'") from None
    base = home / "models" / IMPORTED_DIR
    try:  # disk full, read-only state dir: a clear error, nothing half-written left or registered
        final = target_dir(base, home, display)
        work = base / f".tmp-{final.name}-{os.getpid()}"
        base.mkdir(parents=True, exist_ok=True)
        _clean_stale(base, final.name)
        try:
            _build(src, work, quantize, progress)
            progress("registering", 0, 0)
            options = src.meta.options() if src.meta else {}
            _swap_in(work, final, lambda: register_local_model(
                home, display, f"{IMPORTED_DIR}/{final.name}", options))
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(work.with_name(work.name + "-float"), ignore_errors=True)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise ImportFailed(f"import into {base} failed, nothing was registered: "
                           f"{exc.strerror or exc}{where}") from None
    seconds = time.monotonic() - started
    log.info("model imported name=%s source=%s path=%s seconds=%.1f", display, source, final,
             seconds)
    return ImportResult(display, final, src.provenance["source"], seconds)


def _build(src: Source, work: Path, quantize: str, progress: Progress) -> None:
    """Convert into `work` (float), then quantize in place of it when asked."""
    if quantize in ("auto", "none"):
        work.mkdir(parents=True)
        convert_gguf(src.gguf, work, progress=progress, provenance=src.provenance, meta=src.meta)
        return
    float_dir = work.with_name(work.name + "-float")
    shutil.rmtree(float_dir, ignore_errors=True)
    float_dir.mkdir(parents=True)
    # float32 intermediate: quantizing from it loses nothing more than quantizing the original
    convert_gguf(src.gguf, float_dir, dtype="float32", progress=progress, provenance=src.provenance,
                 meta=src.meta)
    quantize_dir(float_dir, work, int(quantize), progress)


def _clean_stale(base: Path, name: str) -> None:
    """Remove work dirs left by imports that were killed (their process is gone)."""
    for path in [*base.glob(f".tmp-{name}-*"), *base.glob(f".old-{name}-*")]:
        pid = path.name.removesuffix("-float").rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def _swap_in(work: Path, final: Path, register: Callable[[], None]) -> None:
    """Replace `final` with `work` by renames and register it; a failed step restores the old."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    had_old = final.exists()
    if had_old:
        os.replace(final, old)
    try:
        os.replace(work, final)
        register()
    except BaseException:
        if final.exists() and not work.exists():
            os.replace(final, work)  # the caller removes the work dir
        if had_old:
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
