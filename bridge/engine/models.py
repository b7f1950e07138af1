"""Loaded MLX models: load, LRU eviction, keep_alive expiry, freeing memory. Engine thread only."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.engine.memory import allocator_phase, free_memory
from bridge.errors import ModelLoadError
from bridge.modelinfo.vision import adopt_chat_template, is_vision_config

log = logging.getLogger(__name__)

FOREVER = float("inf")
VISION_EXTRA = "vision models need mlx-vlm: pip install 'mlx-bridge[vision]'"


@dataclass
class LoadedModel:
    """A model resident in memory, keyed by the real path of its weights."""

    key: str
    name: str
    model: Any
    tokenizer: Any
    size: int
    context_length: int
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float = 300.0
    expires_at: float = FOREVER  # wall-clock seconds; FOREVER while in use or kept forever
    active: int = 0
    batchable: bool = True  # every KV cache layer can be merged into a BatchGenerator batch
    # A vision-language model (loaded by mlx-vlm): its processor turns text and images into
    # the model's inputs; its jobs run on the VisionRunner (bridge/engine/vision.py).
    processor: Any = None
    samplers: dict[tuple, Any] = field(default_factory=dict)  # shared: one batched sampling call
    kv_bytes_per_token: int = 0  # KV cache bytes one token of context costs (0: not measured)
    kv_bits: int | None = None  # quantized KV caches (OLLAMA_KV_CACHE_TYPE); None: model dtype
    draft: Any = None  # speculative decoding's draft model (a mapping's `draft:`), loaded once
    draft_key: str = ""
    rows: Any = None  # the RowPadding its matmuls use (bridge/engine/rowpad.py); None: none
    fast_attention: bool = False  # its attention uses bridge/engine/cpu_attention.py

    def pad_rows(self, padding: Any) -> None:
        """Pad the rows of this model's (and its draft's) CPU matmuls (engine/rowpad.py)."""
        from bridge.engine.rowpad import try_install

        if try_install(self.model, padding, f"model={self.name}"):
            self.rows = padding

    def speed_attention(self) -> None:
        """Give this model's (and a later draft's) attention the fast CPU exp."""
        from bridge.engine.cpu_attention import try_install

        self.fast_attention = try_install(f"model={self.name}")

    def attach_draft(self, path: str) -> None:
        """Load the draft model beside this one (its memory goes with this model's)."""
        if self.draft is not None and self.draft_key == path:
            return
        draft = load_draft(path)
        if self.rows is not None:
            from bridge.engine.rowpad import try_install

            try_install(draft, self.rows, f"draft={path}")
        if self.fast_attention:  # the draft's architecture may bring its own module
            from bridge.engine.cpu_attention import try_install as speed_attention

            speed_attention(f"draft={path}")
        self.draft, self.draft_key = draft, path
        self.size += _model_bytes(draft)
        log.info("draft model loaded model=%s draft=%s", self.name, path)

    def new_cache(self) -> list[Any] | None:
        """A fresh per-sequence KV cache when quantized; None lets mlx-lm make its own."""
        if self.kv_bits is None:
            return None
        from bridge.engine.kvquant import make_cache

        return make_cache(self.model, self.kv_bits)

    def touch(self, name: str, keep_alive: float) -> None:
        """Record a use (under the name last asked for); expiry is set when the last job ends."""
        self.name = name
        self.keep_alive = keep_alive
        self.last_used = time.monotonic()

    def release(self) -> None:
        """One job finished: restart the keep_alive clock."""
        self.active = max(0, self.active - 1)
        self.last_used = time.monotonic()
        if self.active == 0:
            self.expires_at = FOREVER if self.keep_alive < 0 else time.time() + self.keep_alive


def load_draft(path: str) -> Any:
    """A draft model's weights alone (it proposes token ids: no tokenizer of its own)."""
    from mlx_lm.utils import load_model

    if not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"no MLX model at {path} (config.json missing)")
    try:
        return load_model(Path(path))[0]
    except Exception as exc:
        raise ModelLoadError(f"failed to load draft model: {type(exc).__name__}: {exc}") from None


def load_weights(path: str, tokenizers: Tokenizers | None = None) -> tuple[Any, Any]:
    """mlx_lm.load on a local directory (the tokenizer from `tokenizers`), errors made clear."""
    from mlx_lm.utils import load_model  # imported here: only the engine thread touches MLX

    if not (Path(path) / "config.json").is_file():
        raise ModelLoadError(f"no MLX model at {path} (config.json missing)")
    try:
        model, _ = load_model(Path(path))
        return model, (tokenizers or Tokenizers()).get(path)
    except ValueError as exc:
        if "not supported" in str(exc):
            raise ModelLoadError(f"unsupported architecture: {exc}") from None
        raise ModelLoadError(f"failed to load model: {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"failed to load model: {type(exc).__name__}: {exc}") from None


class Tokenizers:
    """Each model directory's mlx-lm tokenizer, loaded once for the engine and the request threads.

    A load makes ~60 MB of short-lived Python objects for a 49k-token vocabulary (mlx-lm and
    transformers each parse tokenizer.json in Python); loading it once per model instead of once
    per side halves that, and the few objects that outlive a load pin fewer of the allocator's
    arenas (docs/performance.md, "RSS after unload"). Entries are weak: the tokenizer lives as
    long as the loaded model or the request side's slot holds it, and goes with the model.
    Sharing is safe: both sides only encode, decode and render templates (the first encode, the
    one write, happens here), and each caller copies the streaming detokenizer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # per directory: one load at a time
        self._loaded: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()

    def get(self, path: str) -> Any:
        """The tokenizer of `path`'s current files, loading it if nobody holds one (any load
        error is raised)."""
        key = (path, _signature(path))
        with self._lock:
            lock = self._loading.setdefault(path, threading.Lock())
        with lock:
            tokenizer = self._loaded.get(key)
            if tokenizer is None:
                tokenizer = self._loaded[key] = load_text_tokenizer(path)
        return tokenizer


def load_text_tokenizer(path: str) -> Any:
    """What mlx_lm.load would give (its eos ids from the config), the directory's chat template
    adopted, and the first encode (it may reset truncation/padding: a write) done alone."""
    from mlx_lm.utils import load_config, load_tokenizer

    root = Path(path)
    tokenizer = load_tokenizer(root, eos_token_ids=load_config(root).get("eos_token_id"))
    adopt_chat_template(tokenizer, root)
    tokenizer.encode("x")
    return tokenizer


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".npz", ".pt", ".pth")


def _signature(path: str) -> tuple:
    """Every non-weight file's name, size and time (tokenizer, vocab, merges, special tokens,
    chat templates, configs): an edited file makes a new tokenizer, as the request side's
    description digest does."""
    stats = []
    with contextlib.suppress(OSError):
        for entry in sorted(Path(path).iterdir()):
            if entry.name.endswith(_WEIGHT_SUFFIXES):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat()
                if entry.is_file():
                    stats.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(stats)


def load_vision(path: str, tokenizers: Tokenizers | None = None) -> tuple[Any, Any, Any]:
    """mlx_vlm.load on a local directory: (model, mlx-lm tokenizer, mlx-vlm processor).

    The tokenizer is mlx-lm's wrapper over the same files (what the request thread and the
    TokenSink use for the text side: detokenizer, EOS ids, structured output); the processor
    renders the chat template and turns images into pixel values.
    """
    try:
        from mlx_vlm import load
    except ImportError as exc:
        raise ModelLoadError(f"{VISION_EXTRA} ({exc})") from None
    try:
        model, processor = load(path)
        tokenizer = (tokenizers or Tokenizers()).get(path)
    except ValueError as exc:
        if "not supported" in str(exc).lower():
            raise ModelLoadError(f"unsupported vision architecture: {exc}") from None
        raise ModelLoadError(f"failed to load vision model: {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"failed to load vision model: {type(exc).__name__}: {exc}") from None
    return model, tokenizer, processor


def _model_bytes(model: Any) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def _batchable(model: Any) -> bool:
    """BatchGenerator merges per-sequence caches; rotating/SSM caches of some models cannot."""
    from mlx_lm.models.cache import make_prompt_cache

    return all(hasattr(c, "merge") for c in make_prompt_cache(model))


def is_vision_dir(path: str) -> bool:
    """The directory holds a vision-language model (its config has a `vision_config`)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False  # load_weights reports the missing or broken config
    return is_vision_config(cfg)
def weights_bytes(path: str) -> int:
    """What loading `path` will take: its weight files' size (0 if none found)."""
    total = 0
    for pattern in ("*.safetensors", "*.npz"):
        for file in Path(path).glob(pattern):
            with contextlib.suppress(OSError):
                total += file.stat().st_size
    return total


def _context_length(path: str) -> int:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return 2048
    cfg = {**cfg.get("text_config", {}), **cfg}
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return 2048


class ModelCache:
    """The resident models: at most `max_loaded`, and their weights within `max_bytes` (0: no
    byte budget); the least recently used idle model is evicted first."""

    def __init__(self, max_loaded: int = 3, on_unload: Callable[[str], None] | None = None,
                 *, max_bytes: int = 0,
                 on_load: Callable[[LoadedModel], None] | None = None,
                 tokenizers: Tokenizers | None = None) -> None:
        self.max_loaded = max(1, max_loaded)
        self.tokenizers = tokenizers or Tokenizers()  # shared with the request side
        self.max_bytes = max(0, max_bytes)
        self.models: dict[str, LoadedModel] = {}
        self.on_unload = on_unload  # drops what else holds MLX memory for a model (prompt cache)
        self.on_load = on_load  # warms a freshly loaded model up (before any request uses it)
        self._garbage = False  # a model was dropped but its memory not yet handed back

    @property
    def nbytes(self) -> int:
        return sum(m.size for m in self.models.values())

    def load(self, key: str, name: str) -> tuple[LoadedModel, int]:
        """Return the loaded model (loading it if needed) and the load time in ns (never 0)."""
        t0 = time.perf_counter_ns()
        if key in self.models:
            return self.models[key], max(time.perf_counter_ns() - t0, 1)
        need = weights_bytes(key)
        self._check_budget(name, need)
        self._make_room(need)
        allocator_phase("load")
        try:
            loaded = self._read(key, name)
        finally:
            allocator_phase("serve" if self.models else "idle")  # a failed first load: idle
        if self.on_load is not None:
            self.on_load(loaded)
        elapsed = time.perf_counter_ns() - t0
        log.info("model loaded model=%s path=%s size=%d load_ms=%.0f", name, key, loaded.size,
                 elapsed / 1e6)
        return loaded, elapsed

    def _read(self, key: str, name: str) -> LoadedModel:
        """Load the weights and tokenizer (and processor) of `key` and add it to the cache."""
        if is_vision_dir(key):
            model, tokenizer, processor = load_vision(key, self.tokenizers)
            loaded = LoadedModel(key, name, model, tokenizer, _model_bytes(model),
                                 _context_length(key), batchable=False, processor=processor)
        else:
            model, tokenizer = load_weights(key, self.tokenizers)
            loaded = LoadedModel(key, name, model, tokenizer, _model_bytes(model),
                                 _context_length(key), batchable=_batchable(model))
        self.models[key] = loaded
        return loaded

    def _check_budget(self, name: str, need: int) -> None:
        """A model bigger than the whole budget can never fit: say so before reading it."""
        if self.max_bytes and need > self.max_bytes:
            raise ModelLoadError(
                f"model {name} requires more memory ({_gib(need)}) than "
                f"MLX_BRIDGE_MAX_MODEL_BYTES allows ({_gib(self.max_bytes)})")

    def _make_room(self, need: int = 0) -> None:
        """Evict idle models, least recently used first, until one more model fits."""
        while len(self.models) >= self.max_loaded or (
                self.max_bytes and self.models and self.nbytes + need > self.max_bytes):
            idle = [m for m in self.models.values() if m.active == 0]
            if not idle:
                return  # everything is busy: load anyway rather than fail the request
            victim = min(idle, key=lambda m: m.last_used)
            over = len(self.models) < self.max_loaded
            self.unload(victim.key, reason="memory" if over else "lru")

    def unload(self, key: str, reason: str = "request", free: bool = True) -> bool:
        """Drop a model and give its memory back (free=False: at the next `collect()`)."""
        loaded = self.models.pop(key, None)
        if loaded is None:
            return False
        if not self.models:  # before the model's memory goes: its frees hand it back
            allocator_phase("idle")
        name = loaded.name
        del loaded
        if self.on_unload is not None:
            self.on_unload(key)
        self._garbage = True
        if free:
            self.collect()
        log.info("model unloaded model=%s reason=%s", name, reason)
        return True

    def collect(self) -> None:
        """Free the memory of unloaded models once nothing references them any more."""
        if self._garbage:
            self._garbage = False
            free_memory(idle=not self.models)

    def next_expiry(self) -> float:
        """Seconds until the next model expires (inf if none will)."""
        idle = [m.expires_at for m in self.models.values() if m.active == 0]
        return max(0.0, min(idle) - time.time()) if idle else FOREVER

    def clear(self) -> None:
        for key in list(self.models):
            self.unload(key, reason="shutdown")


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"
