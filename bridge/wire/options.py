"""Ollama `options`: typed parsing with Ollama's defaults (api/types.go `Options`)."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bridge.errors import BadRequest

log = logging.getLogger(__name__)

_FLOAT = ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
          "frequency_penalty")
_INT = ("seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_keep", "num_batch",
        "num_gpu", "main_gpu", "num_thread")
_BOOL = ("use_mmap", "numa", "low_vram", "penalize_newline", "use_mlock")
# Options llama.cpp honours that MLX has no use for: accepted (type-checked) and ignored.
# (num_ctx is NOT among them: the engine sizes the context window with it.)
_IGNORED = {"num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "typical_p", *_BOOL}
# Go stores int options in an int64; larger JSON numbers never reach llama.cpp as such.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT32_MAX = 3.4028234663852886e38  # Go's float32 fields: a larger value would become +Inf
# Clearly invalid values are a 400 naming the option (Ollama passes them on to llama.cpp, and
# mlx-lm raises on several of them, which would also corrupt MLX's global random state).
# Bounds are inclusive; the special values keep their meaning: top_k 0 = off, num_ctx 0 = the
# model's own, num_predict -1 = no limit and -2 = fill the context, repeat_last_n -1 = num_ctx.
_FLOAT_RANGES = {"temperature": (0.0, _FLOAT32_MAX), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0),
                 "typical_p": (0.0, 1.0), "repeat_penalty": (0.0, _FLOAT32_MAX)}
_INT_MINIMUMS = {"num_predict": -2, "top_k": 0, "repeat_last_n": -1, "num_ctx": 0}
# Stop strings are matched against every generated character on the engine thread, and text that
# may start one is held back from the client: bound both (Ollama sets no limit; OpenAI allows 4).
MAX_STOPS = 32
MAX_STOP_CHARS = 256
# logit_bias (OpenAI's, also accepted as a native option): token id -> bias, each in OpenAI's
# range; bounded in entries like stops (each is an indexed add on every sampled token).
MAX_LOGIT_BIAS = 1024
LOGIT_BIAS_RANGE = 100.0


@dataclass(frozen=True)
class Options:
    """Sampling and length options of one request, Ollama's defaults filled in."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    typical_p: float = 1.0
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    seed: int = -1
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_ctx: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); not an Ollama option
    explicit: frozenset[str] = field(default_factory=frozenset)

    def context(self, trained: int) -> int:
        """The context window in tokens: num_ctx (0 = the model's own), at most the trained one.

        Ollama clamps a larger num_ctx to the model's training context the same way.
        """
        return min(self.num_ctx, trained) if self.num_ctx > 0 else trained

    def merged(self, defaults: dict[str, Any]) -> Options:
        """Fill options the request did not set from per-model defaults (already validated)."""
        names = {f.name for f in fields(self)}
        extra = {k: v for k, v in defaults.items() if k in names and k not in self.explicit}
        return replace(self, **extra) if extra else self


def parse_options(raw: Any) -> Options:
    """Validate a request's `options` object; unknown and null keys are ignored."""
    if raw is None:
        return Options()
    if not isinstance(raw, dict):
        raise BadRequest("json: cannot unmarshal options: expected an object")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        parsed = _parse_one(key, value)
        if parsed is not _SKIP and key not in _IGNORED:
            values[key] = parsed
    return Options(**values, explicit=frozenset(values))


_SKIP = object()


def _parse_one(key: str, value: Any) -> Any:
    if key in _FLOAT:
        if not _is_number(value):
            raise BadRequest(f'option "{key}" must be of type float32')
        return _in_range(key, float(value), _FLOAT_RANGES.get(key, (-_FLOAT32_MAX, _FLOAT32_MAX)))
    if key in _INT:
        if not _is_number(value) or not float(value).is_integer():
            raise BadRequest(f'option "{key}" must be of type integer')
        low = _INT_MINIMUMS.get(key, -math.inf)
        if value < low:
            raise BadRequest(f'option "{key}" must be at least {low}')
        return min(max(int(value), _INT64_MIN), _INT64_MAX)  # huge counts mean "no limit" anyway
    if key in _BOOL:
        if not isinstance(value, bool):
            raise BadRequest(f'option "{key}" must be of type boolean')
        return value
    if key == "stop":
        return _parse_stop(value)
    if key == "logit_bias":
        return parse_logit_bias(value)
    log.debug("ignoring unknown option key=%s", key)
    return _SKIP


def _in_range(key: str, value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if low <= value <= high:
        return value
    if abs(value) > _FLOAT32_MAX:
        raise BadRequest(f'option "{key}" is out of range for float32')
    if high >= _FLOAT32_MAX:
        raise BadRequest(f'option "{key}" must be at least {low:g}')
    raise BadRequest(f'option "{key}" must be between {low:g} and {high:g}')


def _parse_stop(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    elif not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise BadRequest('option "stop" must be of type array of strings')
    for i, stop in enumerate(value):
        if len(stop) > MAX_STOP_CHARS:
            raise BadRequest(f'option "stop": string {i} is {len(stop)} characters long; '
                             f"at most {MAX_STOP_CHARS} are allowed")
    stops = tuple(v for v in value if v)
    if len(stops) > MAX_STOPS:
        raise BadRequest(f'option "stop" has {len(stops)} strings; at most {MAX_STOPS} are allowed')
    return stops


def parse_logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias`, {"token id": bias}, as sorted (id, bias) pairs; a 400 naming the
    problem otherwise (the ids are checked against the model's vocabulary at admission)."""
    if not isinstance(value, dict):
        raise BadRequest('option "logit_bias" must be an object mapping token ids to numbers')
    if len(value) > MAX_LOGIT_BIAS:
        raise BadRequest(f'option "logit_bias" has {len(value)} entries; at most '
                         f"{MAX_LOGIT_BIAS} are allowed")
    pairs = {}
    for key, bias in value.items():
        token = str(key).strip()
        if not re.fullmatch(r"[0-9]{1,10}", token):  # ASCII digits: int() takes others too
            shown = key if len(str(key)) <= 24 else f"{str(key)[:24]}..."
            raise BadRequest(f'option "logit_bias": {shown!r} is not a token id')
        if not _is_number(bias) or abs(bias) > LOGIT_BIAS_RANGE:
            raise BadRequest(f'option "logit_bias": the bias of token {token} must be a number '
                             f"between -{LOGIT_BIAS_RANGE:g} and {LOGIT_BIAS_RANGE:g}")
        pairs[int(token)] = float(bias)
    return tuple(sorted(pairs.items()))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
