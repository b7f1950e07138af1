"""Read safetensors headers and count parameters without loading any weights."""

from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the JSON header of one safetensors file; ValueError if it is corrupt."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than 8 bytes")
            (length,) = struct.unpack("<Q", raw_len)
            if length < 2 or length > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"bad header length {length}")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"corrupt safetensors header in {path}: {exc}") from exc
    _check_header(header, size - 8 - length, path)
    return header


def _check_header(header: Any, data_size: int, path: str | os.PathLike[str]) -> None:
    """Raise ValueError unless every entry has a dtype, a shape and in-file offsets."""
    if not isinstance(header, dict):
        raise ValueError(f"corrupt safetensors header in {path}: not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and _is_int_list(entry.get("shape"))
            and _is_int_list(entry.get("data_offsets"))
            and len(entry["data_offsets"]) == 2
            and entry["data_offsets"][0] <= entry["data_offsets"][1] <= data_size
        )
        if not ok:
            raise ValueError(f"corrupt safetensors header in {path}: bad entry {name!r}")


def _is_int_list(value: Any) -> bool:
    """True for a list of non-negative ints (bools excluded)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def weight_files(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files a loader would use: model*, else weight*, else any."""
    root = Path(model_dir)
    for pattern in ("model*.safetensors", "weight*.safetensors", "*.safetensors"):
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def read_tensors(files: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """[{name, type, shape}] over all files, sorted by name."""
    tensors = []
    for path in files:
        for name, entry in read_header(path).items():
            if name != "__metadata__":
                tensors.append({"name": name, "type": entry["dtype"], "shape": entry["shape"]})
    return sorted(tensors, key=lambda t: t["name"])


def quantization(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The MLX quantization block ({"group_size", "bits", per-layer overrides}), if any."""
    for key in ("quantization", "quantization_config"):
        block = config.get(key)
        if isinstance(block, dict) and _positive_int(block.get("bits")):
            return block
    return None


def _positive_int(value: Any) -> bool:
    """True for an int > 0 that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def quantized_modules(tensors: Iterable[Mapping[str, Any]]) -> set[str]:
    """Module paths X that have both X.weight and X.scales (MLX packed layout)."""
    names = {t["name"] for t in tensors}
    return {n[: -len(".weight")] for n in names if n.endswith(".weight")} & {
        n[: -len(".scales")] for n in names if n.endswith(".scales")
    }


def _module_bits(quant: Mapping[str, Any], module: str) -> int:
    """Bits for one module: a per-layer override when present, else the global value."""
    override = quant.get(module)
    if isinstance(override, dict) and _positive_int(override.get("bits")):
        return override["bits"]
    return quant["bits"]


def count_parameters(tensors: list[dict[str, Any]], quant: Mapping[str, Any] | None) -> int:
    """Sum of element counts, unpacking MLX-quantized weights and skipping their scales/biases."""
    packed = quantized_modules(tensors) if quant else set()
    total = 0
    for t in tensors:
        module, _, leaf = t["name"].rpartition(".")
        if module in packed and leaf in ("scales", "biases"):
            continue
        shape = t["shape"]
        if module in packed and leaf == "weight" and shape:
            total += math.prod(shape[:-1]) * shape[-1] * 32 // _module_bits(quant, module)
        else:
            total += math.prod(shape)
    return total


def dominant_float_type(tensors: list[dict[str, Any]], config: Mapping[str, Any]) -> str:
    """The float dtype holding most elements ("F32", "BF16", ...), else config torch_dtype."""
    counts: Counter[str] = Counter()
    for t in tensors:
        if t["type"] in _FLOAT_DTYPES:
            counts[t["type"]] += math.prod(t["shape"])
    if counts:
        return counts.most_common(1)[0][0]
    dtype = config.get("torch_dtype") or config.get("dtype")
    return _TORCH_DTYPES.get(dtype, "") if isinstance(dtype, str) else ""
