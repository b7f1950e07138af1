"""Bridge configuration: OLLAMA_HOST-style address parsing and layered settings.

Layers: built-in defaults -> environment -> explicit overrides (CLI flags).
Pure module: no flask or mlx imports.

>>> parse_host("").url, parse_host("0.0.0.0").url, parse_host(":1234").bind
('http://127.0.0.1:11434', 'http://127.0.0.1:11434', '0.0.0.0:1234')
>>> cfg = load_config({"MLX_BRIDGE_HOST": ":8080", "OLLAMA_KEEP_ALIVE": "10m"}, port=9000)
>>> cfg.host.bind, cfg.keep_alive
('0.0.0.0:9000', 600.0)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "DEFAULT_PORT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_THREADS",
    "Config",
    "HostSpec",
    "default_mappings_path",
    "load_config",
    "parse_host",
]

DEFAULT_PORT = 11434
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
_TRUTHY = frozenset({"1", "t", "true", "y", "yes", "on"})
_OVERRIDE_SPECIAL = frozenset({"host", "port", "mappings_path", "upstream", "home", "verbose"})


def _log() -> logging.Logger:
    """Return this module's logger."""
    return logging.getLogger(__name__)


def _trim(raw: str | None) -> str:
    """Trim spaces and surrounding quotes like Ollama's ``envconfig.Var`` (then spaces again)."""
    return (raw or "").strip().strip("\"'").strip()


# --------------------------------------------------------------------------- host parsing


@dataclass(frozen=True)
class HostSpec:
    """A parsed OLLAMA_HOST-style address; ``path`` is empty or starts with ``/``."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def bind(self) -> str:
        """Address for a server to listen on (gunicorn ``bind``).

        >>> parse_host("[::1]:1337").bind, parse_host("example.com").bind
        ('[::1]:1337', 'example.com:11434')
        """
        return _join_host_port(self.host or "0.0.0.0", self.port)

    @property
    def connect_host(self) -> str:
        """Host for a client to dial: unspecified addresses become loopback.

        >>> parse_host("0.0.0.0").connect_host, parse_host("[::]").connect_host
        ('127.0.0.1', '::1')
        """
        ip = _parse_ip(self.host)
        if not self.host or (ip is not None and ip.is_unspecified):
            return "::1" if ip is not None and ip.version == 6 else "127.0.0.1"
        return self.host

    @property
    def url(self) -> str:
        """Base URL for clients (Ollama's ``ConnectableHost``), path kept.

        >>> parse_host("https://example.com/ollama").url
        'https://example.com:443/ollama'
        """
        return f"{self.scheme}://{_join_host_port(self.connect_host, self.port)}{self.path}"

    @property
    def is_loopback(self) -> bool:
        """True when bound to localhost or a loopback IP only.

        >>> parse_host("").is_loopback, parse_host("[::1]").is_loopback
        (True, True)
        >>> parse_host(":1").is_loopback
        False
        """
        if self.host.lower() == "localhost":
            return True
        ip = _parse_ip(self.host)
        return ip is not None and ip.is_loopback

    def with_port(self, port: int) -> HostSpec:
        """Return a copy with ``port`` replaced."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        return dataclasses.replace(self, port=port)


def _parse_ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP literal like Go's ``net.ParseIP`` (no zones); None if not an IP."""
    if not s or "%" in s:
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def _ip_string(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Render an IP like Go's ``IP.String`` (IPv4-mapped IPv6 shown as IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed


def _join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: bracket hosts containing a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``; None where Go returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None
        host, j, k = hostport[1:end], 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1 :]


def _parse_port(port: str, default: int) -> int:
    """Parse a port like Ollama (``ParseInt`` then 0..65535), warning and defaulting otherwise."""
    digits = port[1:] if port[:1] in "+-" else port
    if digits.isascii() and digits.isdigit():
        n = int(port)
        if 0 <= n <= 65535:
            return n
    _log().warning("invalid port, using default: port=%r default=%d", port, default)
    return default


def _split_scheme(s: str) -> tuple[str, str, int | None]:
    """Split ``scheme://rest``; return (scheme, rest, scheme default port or None)."""
    scheme, sep, rest = s.partition("://")
    if not sep:
        if s == "ollama.com":
            return "https", "ollama.com:443", None
        return "http", s, None
    return scheme, rest, {"http": 80, "https": 443}.get(scheme)


def parse_host(raw: str | None, default_port: int = DEFAULT_PORT) -> HostSpec:
    """Parse an OLLAMA_HOST-style value exactly like Ollama's ``envconfig.Host``.

    A bare ``:port`` means all interfaces (host ``0.0.0.0``).

    >>> parse_host("1.2.3.4")
    HostSpec(scheme='http', host='1.2.3.4', port=11434, path='')
    >>> parse_host("::1").bind, parse_host("http://h").port, parse_host("https://h").port
    ('[::1]:11434', 80, 443)
    >>> parse_host(":66000").port, parse_host("'1.2.3.4'").host
    (11434, '1.2.3.4')
    """
    s = _trim(raw)
    scheme, hostport, scheme_port = _split_scheme(s)
    port_default = default_port if scheme_port is None else scheme_port
    hostport, slash, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        ip = _parse_ip(hostport.strip("[]"))
        host = _ip_string(ip) if ip is not None else (hostport or "127.0.0.1")
        port = port_default
    else:
        host, port_text = split
        port = _parse_port(port_text, port_default)
    return HostSpec(
        scheme=scheme, host=host or "0.0.0.0", port=port, path=slash + path if path else ""
    )


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
    # the shared registry (docs/registry.md): PostgreSQL URL, else the SQLite file in `home`
    database_url: str | None = None
    bridge_name: str | None = None  # this bridge in request records; default hostname:port
    require_keys: bool = False  # model endpoints need `Authorization: Bearer <API key>`

    @property
    def bridge_id(self) -> str:
        """Which bridge served a request, in the shared request log."""
        return self.bridge_name or f"{socket.gethostname()}:{self.host.port}"


def _env_str(env: Mapping[str, str], key: str) -> str | None:
    """Return the trimmed value of ``key``, or None when unset or blank."""
    value = _trim(env.get(key))
    return value or None


def _env_int(
    env: Mapping[str, str], key: str, default: int, *, zero_is_default: bool = False
) -> int:
    """Parse a non-negative integer variable; invalid values warn and give ``default``."""
    value = _env_str(env, key)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        _log().warning(
            "invalid environment variable, using default: %s=%r default=%d", key, value, default
        )
        return default
    n = int(value)
    return default if n == 0 and zero_is_default else n


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")


def _env_bytes(env: Mapping[str, str], key: str) -> int:
    """A byte count such as ``8000000000``, ``8GB`` or ``6GiB``; invalid values warn, give 0.

    >>> _env_bytes({"X": "1.5 GiB"}, "X"), _env_bytes({"X": "512"}, "X")
    (1610612736, 512)
    """
    value = _env_str(env, key)
    if value is None:
        return 0
    text = value.lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number):]
    try:
        n = float(number)
    except ValueError:
        n = -1.0
    if unit not in _BYTE_UNITS or n < 0:
        _log().warning("invalid environment variable, using no limit: %s=%r", key, value)
        return 0
    return int(n * _BYTE_UNITS[unit])


def _kv_cache_type(env: Mapping[str, str]) -> str:
    """OLLAMA_KV_CACHE_TYPE like Ollama: an unknown type warns and keeps f16."""
    value = (_env_str(env, "OLLAMA_KV_CACHE_TYPE") or "f16").lower()
    if value not in KV_CACHE_TYPES:
        _log().warning("invalid OLLAMA_KV_CACHE_TYPE, using f16: value=%r choices=%s", value,
                       ",".join(KV_CACHE_TYPES))
        return "f16"
    return value


def _truthy(value: str | None) -> bool:
    """A boolean-ish variable: ``1``, ``true``, ``yes``, ``on``, or a non-zero integer."""
    if value is None:
        return False
    v = value.lower()
    if v in _TRUTHY:
        return True
    digits = v[1:] if v[:1] in "+-" else v
    return digits.isascii() and digits.isdigit() and int(v) != 0


def _path(value: str | os.PathLike[str]) -> Path:
    """Expand ``~`` in a path value."""
    return Path(value).expanduser()


def _origins(raw: str | None) -> list[str]:
    """Split OLLAMA_ORIGINS on commas, trimming entries and dropping empty ones."""
    return [o.strip() for o in (raw or "").split(",") if o.strip()]


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Read every setting the environment provides (mappings default resolved later)."""
    host = _env_str(env, "MLX_BRIDGE_HOST")
    mappings = _env_str(env, "MLX_BRIDGE_MAPPINGS")
    home = _env_str(env, "MLX_BRIDGE_HOME")
    models = _env_str(env, "OLLAMA_MODELS")
    return {
        "host": parse_host(host),
        "mappings_path": _path(mappings) if mappings else None,
        "upstream": _env_str(env, "MLX_BRIDGE_UPSTREAM"),
        "home": _path(home) if home else _default_home(),
        "keep_alive": env_keep_alive(env.get("OLLAMA_KEEP_ALIVE")),
        "max_loaded_models": _env_int(
            env, "OLLAMA_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED_MODELS, zero_is_default=True
        ),
        "num_parallel": _env_int(
            env, "OLLAMA_NUM_PARALLEL", DEFAULT_NUM_PARALLEL, zero_is_default=True
        ),
        "max_queue": _env_int(env, "OLLAMA_MAX_QUEUE", DEFAULT_MAX_QUEUE, zero_is_default=True),
        "context_length": _env_int(env, "OLLAMA_CONTEXT_LENGTH", 0),
        "admin_token": _env_str(env, "MLX_BRIDGE_ADMIN_TOKEN"),
        "verbose": _truthy(_env_str(env, "MLX_BRIDGE_VERBOSE"))
        or _truthy(_env_str(env, "OLLAMA_DEBUG")),
        "models_dir": _path(models) if models else _default_models_dir(),
        "origins": _origins(_env_str(env, "OLLAMA_ORIGINS")),
        "threads": _env_int(env, "MLX_BRIDGE_THREADS", DEFAULT_THREADS, zero_is_default=True),
        "max_body": _env_int(env, "MLX_BRIDGE_MAX_BODY", DEFAULT_MAX_BODY, zero_is_default=True),
        "max_messages": _env_int(
            env, "MLX_BRIDGE_MAX_MESSAGES", DEFAULT_MAX_MESSAGES, zero_is_default=True
        ),
        "max_images": _env_int(env, "MLX_BRIDGE_MAX_IMAGES", DEFAULT_MAX_IMAGES),
        "max_image_bytes": _env_int(
            env, "MLX_BRIDGE_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, zero_is_default=True
        ),
        "max_embed_inputs": _env_int(
            env, "MLX_BRIDGE_MAX_EMBED_INPUTS", DEFAULT_MAX_EMBED_INPUTS, zero_is_default=True
        ),
        "max_embed_tokens": _env_int(
            env, "MLX_BRIDGE_MAX_EMBED_TOKENS", DEFAULT_MAX_EMBED_TOKENS, zero_is_default=True
        ),
        "read_timeout": float(_env_int(
            env, "MLX_BRIDGE_READ_TIMEOUT", int(DEFAULT_READ_TIMEOUT), zero_is_default=True
        )),
        "database_url": _env_str(env, "MLX_BRIDGE_DATABASE_URL"),
        "bridge_name": _env_str(env, "MLX_BRIDGE_ID"),
        "require_keys": _truthy(_env_str(env, "MLX_BRIDGE_REQUIRE_KEYS")),
        "max_model_bytes": _env_bytes(env, "MLX_BRIDGE_MAX_MODEL_BYTES"),
        "kv_cache_type": _kv_cache_type(env),
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
