"""Read-only access to the local Ollama store.

Layout: manifests/<host>/<ns>/<model>/<tag> + blobs/sha256-<hex>."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.importer.errors import ImportFailed
from bridge.importer.gguf_file import check_magic
from bridge.wire.names import ModelName

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TENSOR_MEDIA_TYPE = "application/vnd.ollama.image.tensor"
_TEXT_LAYERS = {"application/vnd.ollama.image.template": "template",
                "application/vnd.ollama.image.system": "system",
                "application/vnd.ollama.image.params": "params"}


@dataclass(frozen=True)
class OllamaModel:
    """One model of the Ollama store: its GGUF blob and the small layers worth keeping."""

    name: str
    manifest: Path
    gguf: Path
    digest: str
    extras: dict[str, str]


def store_root(env: dict[str, str] | None = None) -> Path:
    """$OLLAMA_MODELS, else ~/.ollama/models (Ollama's envconfig.Models)."""
    env = os.environ if env is None else env
    raw = (env.get("OLLAMA_MODELS") or "").strip()
    return Path(os.path.expanduser(raw)) if raw else Path.home() / ".ollama" / "models"


def manifest_path(root: Path, name: ModelName) -> Path | None:
    """The manifest file for `name`, matching each path part case-insensitively as Ollama does."""
    path = root / "manifests"
    for part in (name.host, name.namespace, name.model, name.tag):
        exact = path / part
        if exact.exists():
            path = exact
            continue
        try:
            match = next((p for p in path.iterdir() if p.name.lower() == part.lower()), None)
        except OSError:
            return None
        if match is None:
            return None
        path = match
    return path if path.is_file() else None


def find_model(name: str, root: Path | None = None) -> OllamaModel | None:
    """The store's model named `name`, or None when the store has no such manifest."""
    root = root or store_root()
    parsed = ModelName.try_parse(name)
    if parsed is None:
        return None
    manifest = manifest_path(root, parsed)
    if manifest is None:
        return None
    return _read(parsed.display, root, manifest)


def _read(name: str, root: Path, manifest: Path) -> OllamaModel:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        layers: list[dict[str, Any]] = list(data.get("layers") or [])
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ImportFailed(f"unreadable Ollama manifest {manifest}: {exc}") from None
    model = [layer for layer in layers if layer.get("mediaType") == MODEL_MEDIA_TYPE]
    if not model:
        if any(layer.get("mediaType") == TENSOR_MEDIA_TYPE for layer in layers):
            raise ImportFailed(f"'{name}' is an Ollama MLX (safetensors) model stored per tensor; "
                               "only GGUF models can be imported")
        raise ImportFailed(f"'{name}' has no model layer in its manifest {manifest}")
    digest = str(model[0].get("digest", ""))
    blob = blob_path(root, digest)
    size = model[0].get("size")
    if isinstance(size, int) and blob.stat().st_size != size:
        raise ImportFailed(f"blob {blob} is {blob.stat().st_size} bytes, the manifest says {size}")
    check_magic(blob)
    extras = {}
    for layer in layers:
        kind = _TEXT_LAYERS.get(str(layer.get("mediaType")))
        if kind:
            extras[kind] = blob_path(root, str(layer.get("digest", ""))).read_text(encoding="utf-8")
    return OllamaModel(name, manifest, blob, digest, extras)


def blob_path(root: Path, digest: str) -> Path:
    """blobs/sha256-<hex> for `sha256:<hex>`; ImportFailed if the digest is malformed or missing."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise ImportFailed(f"malformed layer digest '{digest}'")
    path = root / "blobs" / f"sha256-{hexpart}"
    if not path.is_file():
        raise ImportFailed(f"blob {path} is missing from the Ollama store")
    return path


def list_models(root: Path | None = None) -> list[str]:
    """Display names of every manifest in the store (for error messages)."""
    root = root or store_root()
    base = root / "manifests"
    if not base.is_dir():
        return []
    names = []
    for path in sorted(base.glob("*/*/*/*")):
        host, ns, model, tag = path.relative_to(base).parts
        parsed = ModelName.try_parse(f"{host}/{ns}/{model}:{tag}")
        if parsed:
            names.append(parsed.display)
    return names
