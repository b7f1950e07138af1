"""Environment variables read as Ollama's ``envconfig`` reads them: trimmed of spaces and quotes,
an invalid number warned about and replaced by its default, never an exception.

Pure functions over a mapping (``os.environ`` or a test's dict); bridge/config.py names the
variables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

_TRUTHY = frozenset({"1", "t", "true", "y", "yes", "on"})
_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
# Warnings about invalid values come from the settings' logger, whichever helper read them.
log = logging.getLogger("bridge.config")


def trim(raw: str | None) -> str:
    """Trim spaces and surrounding quotes like Ollama's ``envconfig.Var`` (then spaces again)."""
    return (raw or "").strip().strip("\"'").strip()


def env_str(env: Mapping[str, str], key: str) -> str | None:
    """Return the trimmed value of ``key``, or None when unset or blank."""
    value = trim(env.get(key))
    return value or None


def env_int(
    env: Mapping[str, str], key: str, default: int, *, zero_is_default: bool = False
) -> int:
    """Parse a non-negative integer variable; invalid values warn and give ``default``."""
    value = env_str(env, key)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        log.warning(
            "invalid environment variable, using default: %s=%r default=%d", key, value, default
        )
        return default
    n = int(value)
    return default if n == 0 and zero_is_default else n


def env_bytes(env: Mapping[str, str], key: str) -> int:
    """A byte count such as ``8000000000``, ``8GB`` or ``6GiB``; invalid values warn, give 0.

    >>> env_bytes({"X": "1.5 GiB"}, "X"), env_bytes({"X": "512"}, "X")
    (1610612736, 512)
    """
    value = env_str(env, key)
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
        log.warning("invalid environment variable, using no limit: %s=%r", key, value)
        return 0
    return int(n * _BYTE_UNITS[unit])


def truthy(value: str | None) -> bool:
    """A boolean-ish variable: ``1``, ``true``, ``yes``, ``on``, or a non-zero integer."""
    if value is None:
        return False
    v = value.lower()
    if v in _TRUTHY:
        return True
    digits = v[1:] if v[:1] in "+-" else v
    return digits.isascii() and digits.isdigit() and int(v) != 0


def env_on(env: Mapping[str, str], key: str) -> bool:
    """A switch that is on unless ``key`` is set to off, 0, false or no (unset or blank: on)."""
    value = env_str(env, key)
    return value is None or truthy(value)
