"""Go-style durations: ``time.ParseDuration``, ``Duration.String`` and Ollama's keep_alive rules.

All functions work in seconds (``float``); internally Go's integer nanoseconds are used so that
parsing and formatting round-trip exactly like Go does.

>>> parse_go_duration("1h30m")
5400.0
>>> parse_keep_alive("5m"), parse_keep_alive(1800), parse_keep_alive(None)
(300.0, 1800.0, None)
>>> env_keep_alive("600"), env_keep_alive("1h"), env_keep_alive(None)
(600.0, 3600.0, 300.0)
>>> format_go_duration(300)
'5m0s'
"""

from __future__ import annotations

import logging
import math
import re

__all__ = [
    "DEFAULT_KEEP_ALIVE",
    "env_keep_alive",
    "format_go_duration",
    "parse_go_duration",
    "parse_keep_alive",
]

DEFAULT_KEEP_ALIVE = 300.0
"""Ollama's default keep_alive (5m), in seconds."""

_NS = 1
_US = 1_000
_MS = 1_000_000
_S = 1_000_000_000
_M = 60 * _S
_H = 60 * _M
_UNITS = {
    "ns": _NS,
    "us": _US,
    "\u00b5s": _US,  # MICRO SIGN
    "\u03bcs": _US,  # GREEK SMALL LETTER MU
    "ms": _MS,
    "s": _S,
    "m": _M,
    "h": _H,
}
_MAX_NS = 1 << 63  # magnitude limit used by Go's parser
_MAX_INT64 = (1 << 63) - 1
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _log() -> logging.Logger:
    """Return this module's logger."""
    return logging.getLogger(__name__)


def _quote(s: str) -> str:
    r"""Quote ``s`` like Go's ``time.quote`` (non-ASCII and control bytes as ``\xNN``).

    >>> _quote('5x'), _quote('a"b'), _quote('1é')
    ('"5x"', '"a\\"b"', '"1\\xc3\\xa9"')
    """
    out = ['"']
    for ch in s:
        if ord(ch) >= 0x80 or ord(ch) < 0x20:
            raw = ch.encode("utf-8", "surrogatepass")
            out.extend(f"\\x{b:02x}" for b in raw)
        elif ch in '"\\':
            out.append("\\" + ch)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _invalid(orig: str) -> ValueError:
    """Build Go's ``invalid duration`` error."""
    return ValueError(f"time: invalid duration {_quote(orig)}")


def _leading_int(s: str) -> tuple[int, str] | None:
    """Consume ``[0-9]*``; None on overflow (Go's ``errLeadingInt``)."""
    x, i = 0, 0
    while i < len(s) and "0" <= s[i] <= "9":
        if x > _MAX_NS // 10:
            return None
        x = x * 10 + ord(s[i]) - 48
        if x > _MAX_NS:
            return None
        i += 1
    return x, s[i:]


def _leading_fraction(s: str) -> tuple[int, float, str]:
    """Consume ``[0-9]*`` after a dot, returning (digits, scale, rest) like Go."""
    x, scale, i, overflow = 0, 1.0, 0, False
    while i < len(s) and "0" <= s[i] <= "9":
        if not overflow:
            y = x * 10 + ord(s[i]) - 48
            if x > _MAX_INT64 // 10 or y > _MAX_NS:
                overflow = True
            else:
                x, scale = y, scale * 10
        i += 1
    return x, scale, s[i:]


def _split_unit(s: str) -> tuple[str, str]:
    """Split the unit (everything up to the next digit or dot) from the rest."""
    i = 0
    while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
        i += 1
    return s[:i], s[i:]


def _parse_component(s: str, orig: str) -> tuple[int, str]:
    """Parse one ``number unit`` pair; return (nanoseconds, rest)."""
    if not (s[0] == "." or "0" <= s[0] <= "9"):
        raise _invalid(orig)
    lead = _leading_int(s)
    if lead is None:
        raise _invalid(orig)
    v, rest = lead
    pre = len(rest) != len(s)
    f, scale, post = 0, 1.0, False
    if rest.startswith("."):
        f, scale, after = _leading_fraction(rest[1:])
        post = len(after) != len(rest) - 1
        rest = after
    if not pre and not post:
        raise _invalid(orig)
    unit_name, rest = _split_unit(rest)
    if not unit_name:
        raise ValueError(f"time: missing unit in duration {_quote(orig)}")
    unit = _UNITS.get(unit_name)
    if unit is None:
        raise ValueError(f"time: unknown unit {_quote(unit_name)} in duration {_quote(orig)}")
    if v > _MAX_NS // unit:
        raise _invalid(orig)
    v *= unit
    if f > 0:
        v += int(float(f) * (float(unit) / scale))
        if v > _MAX_NS:
            raise _invalid(orig)
    return v, rest


def _parse_ns(orig: str) -> int:
    """Parse a Go duration string into integer nanoseconds."""
    s, neg = orig, False
    if s[:1] in ("-", "+"):
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(orig)
    total = 0
    while s:
        v, s = _parse_component(s, orig)
        total += v
        if total > _MAX_NS:
            raise _invalid(orig)
    if neg:
        return -total
    if total > _MAX_INT64:
        raise _invalid(orig)
    return total


def parse_go_duration(s: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds, raising Go's error text.

    >>> parse_go_duration("1.5h"), parse_go_duration("-1m"), parse_go_duration("300ms")
    (5400.0, -60.0, 0.3)
    >>> parse_go_duration("0")
    0.0
    >>> parse_go_duration("300")
    Traceback (most recent call last):
    ...
    ValueError: time: missing unit in duration "300"
    >>> parse_go_duration("5x")
    Traceback (most recent call last):
    ...
    ValueError: time: unknown unit "x" in duration "5x"
    """
    if not isinstance(s, str):
        raise TypeError(f"duration must be a string, not {type(s).__name__}")
    return _parse_ns(s) / _S


def parse_keep_alive(value: object) -> float | None:
    """Parse a request's ``keep_alive`` (number = seconds, string = Go duration) into seconds.

    None means unset; a negative result means "forever" and is left for the caller.

    >>> parse_keep_alive(0), parse_keep_alive(-1), parse_keep_alive(" 1h30m ")
    (0.0, -1.0, 5400.0)
    >>> parse_keep_alive("300")
    Traceback (most recent call last):
    ...
    ValueError: time: missing unit in duration "300"
    >>> parse_keep_alive(True)
    Traceback (most recent call last):
    ...
    ValueError: invalid keep_alive value: True
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive value: {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            raise ValueError(f"invalid keep_alive value: {value!r}")
        return float(value)
    if isinstance(value, str):
        return parse_go_duration(value.strip())
    raise ValueError(f"invalid keep_alive value: {value!r}")


def _trim_env(raw: str) -> str:
    """Trim spaces and surrounding quotes like Ollama's ``envconfig.Var``."""
    return raw.strip().strip("\"'").strip()


def env_keep_alive(raw: str | None) -> float:
    """Interpret ``OLLAMA_KEEP_ALIVE``: Go duration or integer seconds; invalid -> 300.

    >>> env_keep_alive(""), env_keep_alive("-1"), env_keep_alive("'5m0s'"), env_keep_alive("1d")
    (300.0, -1.0, 300.0, 300.0)
    """
    s = _trim_env(raw or "")
    if not s:
        return DEFAULT_KEEP_ALIVE
    try:
        return parse_go_duration(s)
    except ValueError:
        pass
    if _INT_RE.fullmatch(s) and -(1 << 63) <= int(s) <= _MAX_INT64:
        return float(int(s))
    _log().warning("invalid OLLAMA_KEEP_ALIVE %r, using default %s", raw, "5m0s")
    return DEFAULT_KEEP_ALIVE


def _fmt_frac(v: int, prec: int) -> tuple[str, int]:
    """Format the low ``prec`` digits of ``v`` as ``.ddd`` without trailing zeros."""
    digits = []
    printed = False
    for _ in range(prec):
        digit = v % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        v //= 10
    frac = "." + "".join(reversed(digits)) if printed else ""
    return frac, v


def _format_ns(ns: int) -> str:
    """Format integer nanoseconds like Go's ``Duration.String``."""
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < _S:
        if u < _US:
            unit, prec = "ns", 0
        elif u < _MS:
            unit, prec = "\u00b5s", 3
        else:
            unit, prec = "ms", 6
        frac, whole = _fmt_frac(u, prec)
        return f"{sign}{whole}{frac}{unit}"
    frac, whole = _fmt_frac(u, 9)
    out = f"{whole % 60}{frac}s"
    minutes = whole // 60
    if minutes:
        out = f"{minutes % 60}m{out}"
        if minutes // 60:
            out = f"{minutes // 60}h{out}"
    return sign + out


def format_go_duration(seconds: float) -> str:
    """Format seconds like Go's ``Duration.String`` (infinities clamp to Go's max duration).

    >>> format_go_duration(300), format_go_duration(5400), format_go_duration(0.5)
    ('5m0s', '1h30m0s', '500ms')
    >>> format_go_duration(0), format_go_duration(1.5), format_go_duration(-90)
    ('0s', '1.5s', '-1m30s')
    """
    if math.isnan(seconds):
        raise ValueError("cannot format NaN duration")
    if math.isinf(seconds):
        return _format_ns(_MAX_INT64 if seconds > 0 else -_MAX_INT64 - 1)
    ns = round(seconds * _S)
    return _format_ns(max(-_MAX_INT64 - 1, min(_MAX_INT64, ns)))
