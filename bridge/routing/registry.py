"""The model mapping: Ollama names -> MLX sources, and where their weights are on disk.

Reads `model_mappings.yaml` (the fixed shape below) plus the bridge's own list of models it
imported or pulled (`$MLX_BRIDGE_HOME/local_models.yaml`, same shape). A request's model name is
only ever looked up here, never used as a path.

    upstream: http://127.0.0.1:11435
    models:
      "qwen2.5-coder:7b":
        mlx: mlx-community/Qwen2.5-Coder-7B-Instruct-4bit
        backend: mlx
      "llama3.1:70b":                      # a remote engine: no weights here
        endpoint_url: http://mac-b.local:8080
        backend: mlx                       # MLX on another server: speaks OpenAI by default
        remote_model: mlx-community/Meta-Llama-3.1-70B-Instruct-4bit
        api_key_env: MLX_BRIDGE_KEY_MAC_B  # optional: the key is read from this variable
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bridge.engine.lookup import NAME as LOOKUP
from bridge.engine.lookup import PromptLookup
from bridge.errors import BadRequest
from bridge.modelinfo.describe import is_model_dir
from bridge.wire.durations import parse_keep_alive
from bridge.wire.names import InvalidModelName, ModelName
from bridge.wire.options import parse_options

log = logging.getLogger(__name__)

BACKENDS = ("mlx", "ollama", "auto")
PROTOCOLS = ("ollama", "openai")
# A row or mapping entry names the variable holding an endpoint's key, never another secret of
# the server's environment (the admin token, a cloud credential) to be sent to the endpoint.
KEY_ENV_PREFIX = "MLX_BRIDGE_KEY_"
KEY_ENV_RE = re.compile(re.escape(KEY_ENV_PREFIX) + r"[A-Z0-9_]{1,100}")
LOCAL_MODELS_FILE = "local_models.yaml"
IMPORTED_DIR = "imported"  # under the downloads dir; an import's source is "imported/<slug>"
# A Hugging Face repo id `org/name`; anything else is a directory. Both parts start with an
# alphanumeric and ".." never appears, so no repo id can climb out of the downloads dir.
_REPO_RE = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


class MappingError(ValueError):
    """The mapping file is unreadable or has the wrong shape."""


@dataclass(frozen=True)
class MappedModel:
    """One Ollama name served by MLX (or routed by its backend policy)."""

    name: str
    source: str
    backend: str = "mlx"
    keep_alive: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    origin: str = "mappings"
    endpoint_url: str | None = None  # a remote engine instead of the default upstream
    protocol: str | None = None  # "ollama" | "openai"; None: by backend (see the router)
    remote_model: str | None = None
    api_key_env: str | None = None
    # Speculative decoding's draft: another mapped name, a repo id or a directory (resolved
    # like `mlx`); None: plain decoding.
    draft: str | None = None
    lookup: PromptLookup | None = None  # `draft: prompt-lookup`: the context is the draft

    @property
    def is_local_dir(self) -> bool:
        """The source is a directory of the user's (never deleted by the bridge)."""
        return not _REPO_RE.fullmatch(self.source)


def parse_mappings(data: Any, origin: str, base: Path) -> tuple[str | None, dict[str, MappedModel]]:
    """Validate a decoded mapping file: returns (upstream, {name key: entry})."""
    if data is None:
        return None, {}
    if not isinstance(data, dict):
        raise MappingError("the mapping file must be a YAML mapping with a 'models' key")
    upstream = data.get("upstream")
    if upstream is not None and not isinstance(upstream, str):
        raise MappingError("'upstream' must be a URL string")
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise MappingError("'models' must map Ollama names to {mlx: ..., backend: ...}")
    entries: dict[str, MappedModel] = {}
    for raw_name, spec in models.items():
        entry = _parse_entry(str(raw_name), spec, origin, base)
        entries[ModelName.parse(entry.name).key] = entry
    return upstream, entries


def _parse_entry(raw_name: str, spec: Any, origin: str, base: Path) -> MappedModel:
    try:
        name = ModelName.parse(raw_name).display
    except InvalidModelName:
        raise MappingError(f"invalid model name {raw_name!r} in the mapping file") from None
    if isinstance(spec, str):
        spec = {"mlx": spec}
    remote = _parse_remote(raw_name, spec)
    if not isinstance(spec, dict) or not (
            isinstance(spec.get("mlx"), str) and spec["mlx"] or remote["endpoint_url"]):
        raise MappingError(f"model {raw_name!r}: needs 'mlx: <repo id or directory>' or "
                           "'endpoint_url: <a remote engine>'")
    backend = spec.get("backend", "mlx")
    if backend not in BACKENDS:
        raise MappingError(f"model {raw_name!r}: backend must be one of {', '.join(BACKENDS)}")
    try:
        keep_alive = parse_keep_alive(spec.get("keep_alive"))
    except ValueError as exc:
        raise MappingError(f"model {raw_name!r}: keep_alive: {exc}") from None
    raw_options = spec.get("options") or {}
    if not isinstance(raw_options, dict):
        raise MappingError(f"model {raw_name!r}: options must be a mapping")
    try:  # the same checks as a request's options; keeps only the ones the engine uses
        parsed = parse_options({str(k): v for k, v in raw_options.items()})
    except BadRequest as exc:
        raise MappingError(f"model {raw_name!r}: {exc.message}") from None
    options = {k: getattr(parsed, k) for k in sorted(parsed.explicit)}
    source = resolve_source(spec["mlx"], base) if spec.get("mlx") else ""
    draft, lookup = _parse_draft(raw_name, spec.get("draft"), base)
    return MappedModel(name, source, backend, keep_alive, options, origin, draft=draft,
                       lookup=lookup, **remote)


def _parse_draft(raw_name: str, draft: Any, base: Path) -> tuple[str | None, PromptLookup | None]:
    """`draft:` is a draft model (a mapped name, a repo id or a directory) or prompt lookup."""
    if draft == LOOKUP or isinstance(draft, dict):
        try:
            return None, PromptLookup.parse(draft)
        except ValueError as exc:
            raise MappingError(f"model {raw_name!r}: draft: {exc}") from None
    if draft is not None and (not isinstance(draft, str) or not draft):
        raise MappingError(f"model {raw_name!r}: draft must be a model name, repo id or "
                           f"directory, or {LOOKUP}")
    if draft is not None and ("/" in draft or Path(base, draft).exists()):
        draft = resolve_source(draft, base)  # a directory or a repo id; else a mapped name
    return draft, None


def _parse_remote(raw_name: str, spec: Any) -> dict[str, Any]:
    """The remote-engine fields of an entry: endpoint_url, protocol, remote_model, api_key_env."""
    if not isinstance(spec, dict):
        return {"endpoint_url": None}
    url, protocol = spec.get("endpoint_url"), spec.get("protocol")
    remote_model, key_env = spec.get("remote_model"), spec.get("api_key_env")
    if url is not None and not (isinstance(url, str) and _is_base_url(url)):
        raise MappingError(f"model {raw_name!r}: endpoint_url must be an http:// or https:// base "
                           "URL without credentials (put a key in api_key_env)")
    if protocol is not None and protocol not in PROTOCOLS:
        raise MappingError(f"model {raw_name!r}: protocol must be one of {', '.join(PROTOCOLS)}")
    if remote_model is not None and not (isinstance(remote_model, str) and remote_model.strip()):
        raise MappingError(f"model {raw_name!r}: remote_model must be a non-empty string")
    if key_env is not None and not (isinstance(key_env, str) and KEY_ENV_RE.fullmatch(key_env)):
        raise MappingError(f"model {raw_name!r}: api_key_env must name a variable "
                           f"{KEY_ENV_PREFIX}<NAME> holding the endpoint's key")
    return {"endpoint_url": url.rstrip("/") if url else None, "protocol": protocol,
            "remote_model": remote_model.strip() if remote_model else None,
            "api_key_env": key_env}


def _is_base_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in url
            and not parts.query and not parts.fragment)


def resolve_source(source: str, base: Path) -> str:
    """Relative directories are relative to the mapping file; repo ids stay as they are."""
    if _REPO_RE.fullmatch(source):
        return source
    path = Path(os.path.expanduser(source))
    return str(path if path.is_absolute() else (base / path).resolve())


def read_mapping_file(path: Path, origin: str) -> tuple[str | None, dict[str, MappedModel]]:
    """Read and validate one YAML mapping file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{path} is not valid YAML: {exc}") from None
    try:
        return parse_mappings(data, origin, path.parent)
    except MappingError as exc:
        raise MappingError(f"{path}: {exc}") from None


class Registry:
    """Name lookup over the mapping file and the bridge's own models; re-read when files change."""

    def __init__(self, mappings_path: Path | None, home: Path) -> None:
        self.mappings_path = mappings_path
        self.home = home
        self.upstream: str | None = None
        self._entries: dict[str, MappedModel] = {}
        self._stamp: tuple[Any, ...] = ()
        self._bad_stamp: tuple[Any, ...] = ()  # a broken edit already reported
        self._lock = threading.Lock()
        self.refresh(strict=True)

    @property
    def downloads_dir(self) -> Path:
        """Where the bridge itself puts the models it pulls or imports."""
        return self.home / "models"

    def _files(self) -> list[tuple[Path, str]]:
        files = [(self.home / LOCAL_MODELS_FILE, "local")]
        if self.mappings_path:
            files.append((self.mappings_path, "mappings"))
        return files

    def refresh(self, strict: bool = False) -> None:
        """Re-read the files if they changed; a broken edit keeps the last good state."""
        stamp = tuple(_mtime(p) for p, _ in self._files())
        if stamp == self._stamp or (stamp == self._bad_stamp and not strict):
            return
        try:
            upstream, entries = self._read_all()
        except MappingError as exc:
            if strict:
                raise
            self._bad_stamp = stamp  # report it once, not on every request
            log.error("mapping file invalid; keeping the previous mapping: %s", exc)
            return
        with self._lock:
            self.upstream, self._entries, self._stamp = upstream, entries, stamp

    def _read_all(self) -> tuple[str | None, dict[str, MappedModel]]:
        upstream, entries = None, {}
        for path, origin in self._files():
            if origin == "local" and not path.exists():
                continue
            file_upstream, file_entries = read_mapping_file(path, origin)
            upstream = file_upstream or upstream
            entries.update(file_entries)  # the user's mapping file wins over our own list
        return upstream, entries

    def lookup(self, name: str) -> MappedModel | None:
        """The entry for a request's model name (case-insensitive, `:latest` implied)."""
        parsed = ModelName.try_parse(name)
        if parsed is None:
            return None
        key = parsed.key
        self.refresh()
        with self._lock:
            return self._entries.get(key)

    def entries(self) -> list[MappedModel]:
        self.refresh()
        with self._lock:
            return list(self._entries.values())

    def local_dir(self, entry: MappedModel) -> Path | None:
        """The directory holding the weights, or None when they are not on disk yet (or the entry
        names only a remote engine)."""
        if not entry.source:
            return None
        if entry.is_local_dir:
            path = Path(entry.source)
            return path if is_model_dir(path) else None
        own = self.downloads_dir / entry.source
        if is_model_dir(own):
            return own
        return _hf_cache_dir(entry.source)

    def names_sharing(self, path: Path, name: str) -> list[str]:
        """The other names whose weights are the directory `path`: deleting it would break them."""
        key = ModelName.parse(name).key
        target = path.resolve()
        sharing = []
        for entry in self.entries():
            if ModelName.parse(entry.name).key == key:
                continue
            other = self.local_dir(entry)
            if other is not None and other.resolve() == target:
                sharing.append(entry.name)
        return sorted(sharing)

    def owns(self, path: Path) -> bool:
        """True when `path` lies inside the bridge's own downloads (safe to delete)."""
        try:
            path.resolve().relative_to(self.downloads_dir.resolve())
        except ValueError:
            return False
        return True


@contextlib.contextmanager
def _locked_local_file(home: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Hold an exclusive lock on local_models.yaml; yields (path, its current `models`)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCAL_MODELS_FILE
    with open(home / (LOCAL_MODELS_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the server and `mlx-bridge import` may write at once
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
        models = (data or {}).get("models") or {}
        yield path, models


def _write_local_file(path: Path, models: dict[str, Any]) -> None:
    """Replace the file atomically: readers see the old list or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=".local_models.", suffix=".yaml", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"models": models}, fh, sort_keys=True)
    os.replace(tmp, path)


def register_local_model(home: Path, name: str, source: str,
                         options: dict[str, Any] | None = None) -> None:
    """Record an imported or pulled model (`source` relative to the downloads dir) under `name`;
    `options` are its default request options (an Ollama model's params)."""
    display = ModelName.parse(name).display
    with _locked_local_file(home) as (path, models):
        key = ModelName.parse(display).key
        models = {n: v for n, v in models.items() if ModelName.parse(str(n)).key != key}
        models[display] = {"mlx": source, "backend": "mlx",
                           **({"options": options} if options else {})}
        _write_local_file(path, models)


def local_sources(home: Path) -> dict[str, str]:
    """{name key: source} of every name in local_models.yaml (read under its lock)."""
    with _locked_local_file(home) as (_, models):
        return {ModelName.parse(str(n)).key: str(v.get("mlx", "") if isinstance(v, dict) else v)
                for n, v in models.items()}


def unregister_local_model(home: Path, name: str) -> bool:
    """Drop `name` from local_models.yaml; False when it was not there."""
    key = ModelName.parse(name).key
    with _locked_local_file(home) as (path, models):
        kept = {n: v for n, v in models.items() if ModelName.parse(str(n)).key != key}
        if len(kept) == len(models):
            return False
        _write_local_file(path, kept)
        return True


def _hf_cache_dir(repo_id: str) -> Path | None:
    """A complete snapshot in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None
    return path if is_model_dir(path) else None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
