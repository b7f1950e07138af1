"""A JSON schema's numeric bounds, and regexes for exactly the numbers within them.

json_grammar's `integer` and `number` rules use these: bounds read from either JSON Schema draft
(draft 4's boolean `exclusiveMinimum` or the later numeric one), clamped to the 16-digit integral
part llama.cpp's number rules allow, then written out as a regex digit by digit.
"""

from __future__ import annotations

import math
from typing import Any

from bridge.errors import BadRequest

CAP = 10**16 - 1  # the largest integral part llama.cpp's number rules allow (16 digits)


def has_bounds(schema: dict[str, Any]) -> bool:
    return any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))


def bounds(schema: dict[str, Any]) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """((lower, exclusive) or None, (upper, exclusive) or None), either JSON Schema draft."""
    def pick(incl: str, excl: str) -> tuple[float, bool] | None:
        flag, value = schema.get(excl), schema.get(incl)
        if isinstance(flag, bool):  # draft 4: a flag on minimum/maximum
            return None if value is None else (_num(value, incl), flag)
        options = [(_num(value, incl), False)] if value is not None else []
        if flag is not None:
            options.append((_num(flag, excl), True))
        if not options:
            return None
        return max(options) if incl == "minimum" else min(options, key=lambda o: (o[0], not o[1]))
    return pick("minimum", "exclusiveMinimum"), pick("maximum", "exclusiveMaximum")


def _num(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"format: `{key}` must be a number")
    return value


def integer_limits(schema: dict[str, Any]) -> tuple[int, int]:
    """The inclusive integer range [lo, hi] the schema's bounds allow (empty when lo > hi)."""
    low, high = bounds(schema)
    lo = -CAP if low is None else max(-CAP, math.floor(low[0]) + 1 if low[1] else
                                      math.ceil(low[0]))
    hi = CAP if high is None else min(CAP, math.ceil(high[0]) - 1 if high[1] else
                                      math.floor(high[0]))
    return lo, hi


def number_limits(schema: dict[str, Any]) -> tuple[float, bool, float, bool]:
    """(lo, lo exclusive, hi, hi exclusive), the 16-digit cap applied where it is tighter."""
    low, high = bounds(schema)
    lo, lo_ex = (-CAP, False) if low is None else low
    hi, hi_ex = (CAP, False) if high is None else high
    if lo < -CAP:  # the 16-digit cap is the tighter bound
        lo, lo_ex = -CAP, False
    if hi > CAP:
        hi, hi_ex = CAP, False
    return lo, lo_ex, hi, hi_ex


# ---- numeric ranges as regexes --------------------------------------------------------------

def int_range(lo: int, hi: int) -> str:
    """A regex for the decimal integers in [lo, hi] (no leading zeros, no "-0").

    >>> import re
    >>> rx = re.compile(int_range(-12, 7))
    >>> [n for n in range(-30, 30) if rx.fullmatch(str(n))] == list(range(-12, 8))
    True
    """
    parts = []
    if lo < 0:
        parts.append(f"-({_nonneg_range(max(1, -hi), -lo)})")
    if hi >= 0:
        parts.append(_nonneg_range(max(0, lo), hi))
    return "|".join(f"({p})" for p in parts)


def _nonneg_range(lo: int, hi: int) -> str:
    """Split [lo, hi] (0 <= lo <= hi) by digit count, each piece a same-length range."""
    parts = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (width - 1) if width > 1 else 0)
        b = min(hi, 10**width - 1)
        parts.append(_same_length(str(a), str(b)))
    return "|".join(parts)


def _same_length(a: str, b: str) -> str:
    """A regex for the digit strings of len(a) == len(b) between a and b, inclusive."""
    if not a:
        return ""
    if a == b:
        return a
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return f"[{a[0]}-{b[0]}]" + (f"[0-9]{{{rest}}}" if rest else "")
    if a[0] == b[0]:
        return a[0] + f"({_same_length(a[1:], b[1:])})"
    parts = [a[0] + f"({_same_length(a[1:], '9' * rest)})"]
    if int(b[0]) - int(a[0]) > 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{rest}}}")
    parts.append(b[0] + f"({_same_length('0' * rest, b[1:])})")
    return "|".join(parts)


def number_range(lo: int, lo_ex: bool, hi: int, hi_ex: bool) -> str:
    """A regex for the decimals (no exponent) between integral bounds, inclusive or not.

    >>> import re
    >>> rx = re.compile(number_range(-2, True, 3, False))
    >>> [s for s in ["-2", "-1.5", "-0", "0", "0.5", "3", "3.0", "3.01", "-2.0", "-1.99"]
    ...  if rx.fullmatch(s)]
    ['-1.5', '0', '0.5', '3', '3.0', '-1.99']
    """
    parts = []
    if hi > 0 or (hi == 0 and not hi_ex):
        a, a_ex = (lo, lo_ex) if lo >= 0 else (0, False)
        parts.append(_nonneg_decimal(a, a_ex, hi, hi_ex))
    if lo < 0:  # x < 0 as "-" and y = -x > 0
        y_lo, y_lo_ex = (-hi, hi_ex) if hi < 0 else (0, True)
        parts.append(f"-({_nonneg_decimal(y_lo, y_lo_ex, -lo, lo_ex)})")
    return "|".join(f"({p})" for p in parts if p)


def _nonneg_decimal(a: int, a_ex: bool, b: int, b_ex: bool) -> str:
    any_fraction, zero_fraction, nonzero_fraction = r"(\.[0-9]+)?", r"(\.0+)?", r"\.0*[1-9][0-9]*"
    if a == b:
        return "" if a_ex or b_ex else f"{a}{zero_fraction}"
    parts = [f"{a}{nonzero_fraction if a_ex else any_fraction}"]
    if b - a >= 2:
        parts.append(f"({_nonneg_range(a + 1, b - 1)}){any_fraction}")
    if not b_ex:
        parts.append(f"{b}{zero_fraction}")
    return "|".join(f"({p})" for p in parts)
