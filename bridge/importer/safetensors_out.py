"""Write safetensors shards one tensor at a time (float32, float16 or bfloat16; no MLX/torch)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_BYTES = 2 * 1024**3
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class PlannedTensor:
    """An output tensor: its name, shape and a function producing its float32 values."""

    name: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]
    source_bytes: int  # for progress: how much of the input this tensor consumes


def encode(values: np.ndarray, dtype: str) -> bytes:
    """float32 values as little-endian bytes of `dtype` (bfloat16 rounded to nearest even)."""
    if dtype == "F32":
        return np.ascontiguousarray(values, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(values, dtype="<f2").tobytes()
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype("<u2").tobytes()


def plan_shards(tensors: list[PlannedTensor], dtype: str) -> list[list[PlannedTensor]]:
    """Group tensors into shards of at most SHARD_BYTES (a bigger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        n = int(np.prod(t.shape)) * _ITEMSIZE[dtype]
        if shards[-1] and size + n > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


def write_model(out: Path, tensors: list[PlannedTensor], dtype: str,
                on_tensor: Callable[[PlannedTensor], None]) -> int:
    """Write model-*.safetensors (+ index when sharded); returns the total bytes written."""
    shards = plan_shards(tensors, dtype)
    names = ([f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
             if len(shards) > 1 else ["model.safetensors"])
    weight_map, total = {}, 0
    for name, shard in zip(names, shards, strict=True):
        total += _write_shard(out / name, shard, dtype, on_tensor)
        weight_map.update({t.name: name for t in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _write_shard(path: Path, tensors: Iterable[PlannedTensor], dtype: str,
                 on_tensor: Callable[[PlannedTensor], None]) -> int:
    tensors = list(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for t in tensors:
        n = int(np.prod(t.shape)) * _ITEMSIZE[dtype]
        header[t.name] = {"dtype": dtype, "shape": list(t.shape),
                          "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for t in tensors:
            values = t.produce()
            if tuple(values.shape) != t.shape:
                raise ValueError(f"{t.name}: produced shape {values.shape}, planned {t.shape}")
            fh.write(encode(values, dtype))
            on_tensor(t)
    return offset
