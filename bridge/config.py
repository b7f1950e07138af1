"""Bridge configuration: layered settings.

Layers: built-in defaults -> environment -> explicit overrides (CLI flags). Addresses are
parsed by bridge/hosts.py (OLLAMA_HOST's rules), variables read by bridge/envvars.py (Ollama's
envconfig rules).
Pure module: no flask or mlx imports.

>>> cfg = load_config({"MLX_BRIDGE_HOST": ":8080", "OLLAMA_KEEP_ALIVE": "10m"}, port=9000)
>>> cfg.host.bind, cfg.keep_alive
('0.0.0.0:9000', 600.0)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.envvars import env_bytes, env_int, env_on, env_str, truthy
from bridge.hosts import HostSpec, parse_host
from bridge.wire.durations import env_keep_alive

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_EMBED_INPUTS",
    "DEFAULT_MAX_EMBED_TOKENS",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_MESSAGES",
    "DEFAULT_MAX_LOADED_MODELS",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_NUM_PARALLEL",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_THREADS",
    "Config",
    "default_mappings_path",
    "load_config",
]

DEFAULT_MAX_LOADED_MODELS = 3  # Ollama: 0 = automatic = 3 on CPU / unified memory
# Ollama defaults to 1; the bridge batches: 8 lets 8 clients outrun mlx_lm.server (issue 17).
# The engine lowers it per model when memory cannot hold that many full KV caches.
DEFAULT_NUM_PARALLEL = 8
DEFAULT_MAX_QUEUE = 512
DEFAULT_THREADS = 64
DEFAULT_REQUEST_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_READ_TIMEOUT = 30.0  # seconds for a whole request (headers and body) to arrive
DEFAULT_MAX_BODY = 32 * 1024 * 1024  # request body cap (bridge/http/limits.py); blob uploads exempt
DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_IMAGES = 32  # per request
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024  # one decoded image
DEFAULT_MAX_EMBED_INPUTS = 2048  # per embedding request (OpenAI's cap too)
DEFAULT_MAX_EMBED_TOKENS = 300_000  # per embedding request, after truncation (OpenAI's cap)
_OVERRIDE_SPECIAL = frozenset({"host", "port", "mappings_path", "upstream", "home", "verbose"})
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def _log() -> logging.Logger:
    """Return this module's logger."""
    return logging.getLogger(__name__)


# --------------------------------------------------------------------------- settings


def default_mappings_path() -> Path:
    """Path of the model mappings file shipped inside the package."""
    return Path(__file__).resolve().parent / "data" / "model_mappings.yaml"


def _default_home() -> Path:
    """Default state directory (``~/.mlx-bridge``)."""
    return Path("~/.mlx-bridge").expanduser()


def _default_models_dir() -> Path:
    """Default Ollama model store (``~/.ollama/models``)."""
    return Path("~/.ollama/models").expanduser()


@dataclass
class Config:
    """Resolved bridge settings; durations are seconds, negative keep_alive means forever."""

    host: HostSpec = field(default_factory=lambda: parse_host(None))
    mappings_path: Path | None = None
    upstream: str | None = None
    home: Path = field(default_factory=_default_home)
    keep_alive: float = 300.0
    max_loaded_models: int = DEFAULT_MAX_LOADED_MODELS
    num_parallel: int = DEFAULT_NUM_PARALLEL
    # OLLAMA_CONTEXT_LENGTH: the context window of a request that sets no num_ctx (nor its
    # mapping / admin row); 0 = the model's trained context (Ollama sizes it by VRAM instead).
    context_length: int = 0
    max_queue: int = DEFAULT_MAX_QUEUE
    admin_token: str | None = None
    verbose: bool = False
    models_dir: Path = field(default_factory=_default_models_dir)
    origins: list[str] = field(default_factory=list)
    threads: int = DEFAULT_THREADS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    max_messages: int = DEFAULT_MAX_MESSAGES
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_embed_inputs: int = DEFAULT_MAX_EMBED_INPUTS
    max_embed_tokens: int = DEFAULT_MAX_EMBED_TOKENS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_model_bytes: int = 0  # byte budget for resident MLX models; 0 = none (count only)
    kv_cache_type: str = "f16"  # OLLAMA_KV_CACHE_TYPE: f16 (model dtype), q8_0 or q4_0
    warm_start: bool = True  # MLX_BRIDGE_WARM_START: a tiny model run once at start (engine)
    # the shared registry (docs/registry.md): PostgreSQL URL, else the SQLite file in `home`
    database_url: str | None = None
    bridge_name: str | None = None  # this bridge in request records; default hostname:port
    require_keys: bool = False  # model endpoints need `Authorization: Bearer <API key>`

    @property
    def bridge_id(self) -> str:
        """Which bridge served a request, in the shared request log."""
        return self.bridge_name or f"{socket.gethostname()}:{self.host.port}"


def _kv_cache_type(env: Mapping[str, str]) -> str:
    """OLLAMA_KV_CACHE_TYPE like Ollama: an unknown type warns and keeps f16."""
    value = (env_str(env, "OLLAMA_KV_CACHE_TYPE") or "f16").lower()
    if value not in KV_CACHE_TYPES:
        _log().warning("invalid OLLAMA_KV_CACHE_TYPE, using f16: value=%r choices=%s", value,
                       ",".join(KV_CACHE_TYPES))
        return "f16"
    return value


def _path(value: str | os.PathLike[str]) -> Path:
    """Expand ``~`` in a path value."""
    return Path(value).expanduser()


def _origins(raw: str | None) -> list[str]:
    """Split OLLAMA_ORIGINS on commas, trimming entries and dropping empty ones."""
    return [o.strip() for o in (raw or "").split(",") if o.strip()]


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Read every setting the environment provides (mappings default resolved later)."""
    host = env_str(env, "MLX_BRIDGE_HOST")
    mappings = env_str(env, "MLX_BRIDGE_MAPPINGS")
    home = env_str(env, "MLX_BRIDGE_HOME")
    models = env_str(env, "OLLAMA_MODELS")
    return {
        "host": parse_host(host),
        "mappings_path": _path(mappings) if mappings else None,
        "upstream": env_str(env, "MLX_BRIDGE_UPSTREAM"),
        "home": _path(home) if home else _default_home(),
        "keep_alive": env_keep_alive(env.get("OLLAMA_KEEP_ALIVE")),
        "max_loaded_models": env_int(
            env, "OLLAMA_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED_MODELS, zero_is_default=True
        ),
        "num_parallel": env_int(
            env, "OLLAMA_NUM_PARALLEL", DEFAULT_NUM_PARALLEL, zero_is_default=True
        ),
        "max_queue": env_int(env, "OLLAMA_MAX_QUEUE", DEFAULT_MAX_QUEUE, zero_is_default=True),
        "context_length": env_int(env, "OLLAMA_CONTEXT_LENGTH", 0),
        "admin_token": env_str(env, "MLX_BRIDGE_ADMIN_TOKEN"),
        "verbose": truthy(env_str(env, "MLX_BRIDGE_VERBOSE"))
        or truthy(env_str(env, "OLLAMA_DEBUG")),
        "models_dir": _path(models) if models else _default_models_dir(),
        "origins": _origins(env_str(env, "OLLAMA_ORIGINS")),
        "threads": env_int(env, "MLX_BRIDGE_THREADS", DEFAULT_THREADS, zero_is_default=True),
        "max_body": env_int(env, "MLX_BRIDGE_MAX_BODY", DEFAULT_MAX_BODY, zero_is_default=True),
        "max_messages": env_int(
            env, "MLX_BRIDGE_MAX_MESSAGES", DEFAULT_MAX_MESSAGES, zero_is_default=True
        ),
        "max_images": env_int(env, "MLX_BRIDGE_MAX_IMAGES", DEFAULT_MAX_IMAGES),
        "max_image_bytes": env_int(
            env, "MLX_BRIDGE_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, zero_is_default=True
        ),
        "max_embed_inputs": env_int(
            env, "MLX_BRIDGE_MAX_EMBED_INPUTS", DEFAULT_MAX_EMBED_INPUTS, zero_is_default=True
        ),
        "max_embed_tokens": env_int(
            env, "MLX_BRIDGE_MAX_EMBED_TOKENS", DEFAULT_MAX_EMBED_TOKENS, zero_is_default=True
        ),
        "read_timeout": float(env_int(
            env, "MLX_BRIDGE_READ_TIMEOUT", int(DEFAULT_READ_TIMEOUT), zero_is_default=True
        )),
        "database_url": env_str(env, "MLX_BRIDGE_DATABASE_URL"),
        "bridge_name": env_str(env, "MLX_BRIDGE_ID"),
        "require_keys": truthy(env_str(env, "MLX_BRIDGE_REQUIRE_KEYS")),
        "max_model_bytes": env_bytes(env, "MLX_BRIDGE_MAX_MODEL_BYTES"),
        "kv_cache_type": _kv_cache_type(env),
        "warm_start": env_on(env, "MLX_BRIDGE_WARM_START"),
    }


def _apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Apply non-None overrides in place (``host`` before ``port``)."""
    known = {f.name for f in dataclasses.fields(Config)} | _OVERRIDE_SPECIAL
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown config override(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "host" in given:
        host = given.pop("host")
        values["host"] = host if isinstance(host, HostSpec) else parse_host(str(host))
    if "port" in given:
        values["host"] = values["host"].with_port(int(given.pop("port")))
    for key in ("mappings_path", "home", "models_dir"):
        if key in given:
            given[key] = _path(given[key])
    if "verbose" in given:
        given["verbose"] = bool(given["verbose"])
    values.update(given)


def mappings_given(flag: str | None, env: Mapping[str, str] | None = None) -> bool:
    """The user named a mapping file (`--mappings`, given as `flag`, or MLX_BRIDGE_MAPPINGS):
    then no demo is imported unless asked for, and a service keeps naming that file.

    >>> mappings_given(None, {}), mappings_given("m.yaml", {})
    (False, True)
    >>> mappings_given(None, {"MLX_BRIDGE_MAPPINGS": "m.yaml"})
    True
    """
    return bool(flag or env_str(os.environ if env is None else env, "MLX_BRIDGE_MAPPINGS"))


def _resolve_mappings(home: Path) -> Path:
    """Default mappings file: ``$MLX_BRIDGE_HOME/model_mappings.yaml`` if present, else packaged."""
    user_file = home / "model_mappings.yaml"
    return user_file if user_file.is_file() else default_mappings_path()


def load_config(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build a Config from defaults, then ``env`` (default ``os.environ``), then ``overrides``.

    Overrides: ``host`` (raw string or HostSpec), ``port``, ``mappings_path``, ``upstream``,
    ``home``, ``verbose``, or any other Config field by name; None values are ignored.

    >>> load_config({}).host.bind
    '127.0.0.1:11434'
    >>> load_config({"OLLAMA_HOST": "0.0.0.0:1"}).host.bind  # OLLAMA_HOST is for clients only
    '127.0.0.1:11434'
    >>> load_config({"MLX_BRIDGE_HOST": "0.0.0.0:1"}, host="[::1]:1337").host.url
    'http://[::1]:1337'
    """
    values = _from_env(os.environ if env is None else env)
    _apply_overrides(values, overrides)
    if values["mappings_path"] is None:
        values["mappings_path"] = _resolve_mappings(values["home"])
    return Config(**values)
