"""Ollama model names (``types/model/name.go``): parsing, validation and display forms.

Format: ``[host/][namespace/]model[:tag][@digest]`` with defaults ``registry.ollama.ai``,
``library`` and ``latest``. An ``http://`` or ``https://`` before the host and a ``@digest``
suffix are accepted and dropped.

>>> ModelName.parse("llama3")
ModelName(host='registry.ollama.ai', namespace='library', model='llama3', tag='latest')
>>> normalize("hf.co/user/repo:Q4_K_M")
'hf.co/user/repo:Q4_K_M'
>>> name_key("Qwen2.5-Coder:7B")
'qwen2.5-coder:7b'
>>> normalize("../../etc")
Traceback (most recent call last):
...
bridge.wire.names.InvalidModelName: invalid model name
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "InvalidModelName",
    "ModelName",
    "name_key",
    "normalize",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = _MODEL_RE
_DIGEST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")


class InvalidModelName(ValueError):
    """A model name that Ollama would reject (400 ``invalid model name``)."""

    def __init__(self, name: str = "", reason: str = "") -> None:
        """Keep the offending name and reason; the message stays Ollama's text."""
        super().__init__("invalid model name")
        self.name = name
        self.reason = reason


def _check(pattern: re.Pattern[str], part: str, what: str, raw: str) -> str:
    """Return ``part`` if it fully matches ``pattern``, else raise InvalidModelName."""
    if not pattern.fullmatch(part):
        raise InvalidModelName(raw, f"invalid {what} {part!r}")
    return part


def _cut_last(s: str, sep: str) -> tuple[str, str | None]:
    """Split at the last ``sep``; the second item is None when ``sep`` is absent."""
    i = s.rfind(sep)
    return (s, None) if i < 0 else (s[:i], s[i + len(sep) :])


def _split(raw: str) -> tuple[str | None, str | None, str, str | None]:
    """Split a raw name into (host, namespace, model, tag), parts possibly None or empty."""
    s, digest = _cut_last(raw, "@")
    if digest is not None:
        _check(_DIGEST_RE, digest, "digest", raw)
    tag = None
    if s.rfind(":") > s.rfind("/"):
        s, tag = _cut_last(s, ":")
    s, model = _cut_last(s, "/")
    if model is None:
        return None, None, s, tag
    s, namespace = _cut_last(s, "/")
    if namespace is None:
        return None, s, model, tag
    scheme, sep, host = s.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise InvalidModelName(raw, f"unsupported scheme {scheme!r}")
    return (host if sep else scheme), namespace, model, tag


def _reject_obvious(raw: str) -> None:
    """Reject path-like or malformed input before splitting."""
    if not isinstance(raw, str):
        raise InvalidModelName(str(raw), "not a string")
    if not raw or raw.startswith("/") or ".." in raw or "\\" in raw:
        raise InvalidModelName(raw, "empty or path-like")
    if any(c.isspace() for c in raw):
        raise InvalidModelName(raw, "contains whitespace")


@dataclass(frozen=True)
class ModelName:
    """A fully qualified Ollama model name (digest dropped), casing as given."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, s: str) -> ModelName:
        """Parse and validate ``s``, filling default host, namespace and tag.

        >>> ModelName.parse("user/model:tag").display
        'user/model:tag'
        >>> ModelName.parse("registry.ollama.ai/library/llama3.2@sha256:abc").display
        'llama3.2:latest'
        >>> ModelName.parse("a/b/c/d")
        Traceback (most recent call last):
        ...
        bridge.wire.names.InvalidModelName: invalid model name
        """
        _reject_obvious(s)
        host, namespace, model, tag = _split(s)
        return cls(
            host=_check(_HOST_RE, DEFAULT_HOST if host is None else host, "host", s),
            namespace=_check(
                _NAMESPACE_RE, DEFAULT_NAMESPACE if namespace is None else namespace, "namespace", s
            ),
            model=_check(_MODEL_RE, model, "model", s),
            tag=_check(_TAG_RE, DEFAULT_TAG if tag is None else tag, "tag", s),
        )

    @classmethod
    def try_parse(cls, s: str) -> ModelName | None:
        """``parse``, or None for a name Ollama would reject (for callers that skip or 404 it).

        >>> ModelName.try_parse("llama3").key, ModelName.try_parse("../etc")
        ('llama3:latest', None)
        """
        try:
            return cls.parse(s)
        except InvalidModelName:
            return None

    @property
    def display(self) -> str:
        """Ollama's ``DisplayShortest``: default host/namespace dropped, tag always present.

        >>> ModelName.parse("llama3.2").display, ModelName.parse("hf.co/user/repo:q4").display
        ('llama3.2:latest', 'hf.co/user/repo:q4')
        >>> ModelName.parse("example.com/library/m").display
        'example.com/library/m:latest'
        """
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Case-insensitive lookup key (the display form, lower-cased).

        >>> ModelName.parse("Qwen2.5-Coder:7B").key
        'qwen2.5-coder:7b'
        """
        return self.display.lower()

    @property
    def namespace_display(self) -> str:
        """Namespace for /v1/models ``owned_by`` (``library`` by default).

        >>> ModelName.parse("llama3").namespace_display, ModelName.parse("user/m").namespace_display
        ('library', 'user')
        """
        return self.namespace

    def __str__(self) -> str:
        """Return the display form."""
        return self.display


def normalize(s: str) -> str:
    """Return the display form of ``s``; raise InvalidModelName if invalid.

    >>> normalize("llama3"), normalize("user/model:tag")
    ('llama3:latest', 'user/model:tag')
    """
    return ModelName.parse(s).display


def name_key(s: str) -> str:
    """Return the case-insensitive lookup key of ``s``; raise InvalidModelName if invalid.

    >>> name_key("Library/Llama3:Latest")
    'llama3:latest'
    """
    return ModelName.parse(s).key
