"""Quantized KV caches that batch (OLLAMA_KV_CACHE_TYPE q8_0 / q4_0). Engine thread only.

mlx-lm's `QuantizedKVCache` stores keys and values as MLX-quantized (packed, scales, biases)
triples, and its attention runs `quantized_matmul` on them; but it has no `merge`, and mlx-lm
has no batched counterpart, so `BatchGenerator` cannot batch it (mlx_lm.server turns batching
off for it). `BatchQuantizedKVCache` is `BatchKVCache` with each array op applied to the three
parts; `QuantizedCache.merge` builds one, so the BatchGenerator, the prompt cache (which keeps
what `extract` returns) and the single path all work on quantized caches.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import BatchKVCache, KVCache, QuantizedKVCache, dynamic_roll

GROUP_SIZE = 64
BITS = {"q8_0": 8, "q4_0": 4}  # OLLAMA_KV_CACHE_TYPE -> MLX bits; "f16" keeps the model dtype


def kv_bits(kv_type: str) -> int | None:
    return BITS.get(kv_type)


def quantizable(model: Any) -> bool:
    """Every layer a plain KVCache whose head size MLX can quantize in groups of 64."""
    caches = model.make_cache() if hasattr(model, "make_cache") else None
    if caches is not None and not all(type(c) is KVCache for c in caches):
        return False
    args = getattr(model, "args", None)
    heads = getattr(args, "num_attention_heads", 0)
    head_dim = getattr(args, "head_dim", None) or (
        getattr(args, "hidden_size", 0) // heads if heads else 0)
    return bool(head_dim) and head_dim % GROUP_SIZE == 0


def make_cache(model: Any, bits: int) -> list[QuantizedCache]:
    return [QuantizedCache(GROUP_SIZE, bits) for _ in model.layers]


class QuantizedCache(QuantizedKVCache):
    """mlx-lm's QuantizedKVCache that BatchGenerator can merge into a batch."""

    @property
    def state(self):  # arrays only: what mx.eval and nbytes walk
        return self.keys, self.values

    @state.setter
    def state(self, v):
        self.keys, self.values = v

    def size(self) -> int:
        return self.offset

    @classmethod
    def merge(cls, caches: list[QuantizedCache]) -> BatchQuantizedKVCache:
        lengths = [c.offset if c.keys is not None else 0 for c in caches]
        longest = max(lengths)
        first = next((c for c in caches if c.keys is not None), None)
        batch = BatchQuantizedKVCache([longest - n for n in lengths],
                                      group_size=caches[0].group_size, bits=caches[0].bits)
        if first is None or longest == 0:
            return batch

        def zeros(part: mx.array) -> mx.array:
            return mx.zeros((len(caches), part.shape[1], longest, part.shape[3]), part.dtype)

        keys, values = tree_map(zeros, (first.keys, first.values))
        for i, (n, c) in enumerate(zip(lengths, caches, strict=True)):
            if not n:
                continue
            for dst, src in zip(keys + values, c.keys + c.values, strict=True):
                dst[i : i + 1, :, longest - n :] = src[..., :n, :]
        batch.keys, batch.values = keys, values
        batch.offset += longest
        batch._idx = longest
        return batch


class BatchQuantizedKVCache(BatchKVCache):
    """BatchKVCache whose keys and values are (packed, scales, biases) triples."""

    def __init__(self, left_padding: list[int], group_size: int = GROUP_SIZE,
                 bits: int = 8) -> None:
        super().__init__(left_padding)
        self.group_size = group_size
        self.bits = bits  # its presence makes mlx-lm's attention take the quantized path

    def _alloc(self, b: int, heads: int, steps: int, dim: int, dtype: Any) -> tuple:
        per_int = 32 // self.bits
        return (mx.zeros((b, heads, steps, dim // per_int), mx.uint32),
                mx.zeros((b, heads, steps, dim // self.group_size), dtype),
                mx.zeros((b, heads, steps, dim // self.group_size), dtype))

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple:
        prev, n = self._idx, keys.shape[2]
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            b, heads = keys.shape[:2]
            steps = (self.step + n - 1) // self.step * self.step
            new_k = self._alloc(b, heads, steps, keys.shape[3], keys.dtype)
            new_v = self._alloc(b, heads, steps, values.shape[3], values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                if prev % self.step:
                    self.keys, self.values = tree_map(lambda x: x[..., :prev, :],
                                                      (self.keys, self.values))
                self.keys, self.values = tree_map(lambda x, y: mx.concatenate([x, y], axis=2),
                                                  (self.keys, self.values), (new_k, new_v))
        self.offset = self.offset + n
        self._idx += n
        q_keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        q_values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for dst, src in zip(self.keys + self.values, q_keys + q_values, strict=True):
            dst[..., prev : self._idx, :] = src
        return self.keys_and_values()

    def keys_and_values(self) -> tuple:
        return tree_map(lambda x: x[..., : self._idx, :], (self.keys, self.values))

    def finalize(self) -> None:
        if self._right_padding is not None:
            padding = self._right_padding
            self.keys, self.values = tree_map(
                lambda x: dynamic_roll(x, padding[:, None], axis=2), (self.keys, self.values))
            self.offset = self.offset - padding
            self.left_padding += padding
            self._right_padding = None

    def filter(self, batch_indices: Any) -> None:
        if self.keys is not None:
            self.keys, self.values = tree_map(lambda x: x[batch_indices],
                                              (self.keys, self.values))
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shift = min(self.left_padding.tolist())
        if shift > 0:
            if self.keys is not None:
                self.keys, self.values = tree_map(lambda x: x[..., shift:, :],
                                                  (self.keys, self.values))
            self._idx -= shift
            self.left_padding -= shift

    def extend(self, other: BatchQuantizedKVCache) -> None:
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        like = (self if self.keys is not None else other).keys + (
            self if self.keys is not None else other).values

        def parts(c: BatchQuantizedKVCache) -> tuple:
            if c.keys is None:
                b = c.offset.shape[0]
                arrays = [mx.zeros((b, x.shape[1], 0, x.shape[3]), x.dtype) for x in like]
            else:
                arrays = list(c.keys + c.values)
            left = idx - c._idx
            right = size - arrays[0].shape[2] - left
            if right < 0:
                arrays = [x[..., :right, :] for x in arrays]
                right = 0
            if left or right:
                arrays = [mx.pad(x, [(0, 0), (0, 0), (left, right), (0, 0)]) for x in arrays]
            return arrays, c.offset, c.left_padding + left

        (a, a_off, a_pad), (b, b_off, b_pad) = parts(self), parts(other)
        joined = [mx.concatenate([x, y]) for x, y in zip(a, b, strict=True)]
        self.keys, self.values = tuple(joined[:3]), tuple(joined[3:])
        self.offset = mx.concatenate([a_off, b_off])
        self.left_padding = mx.concatenate([a_pad, b_pad])
        self._idx = idx

    def extract(self, idx: int) -> QuantizedCache:
        cache = QuantizedCache(self.group_size, self.bits)
        mx.eval(self.left_padding)
        pad = self.left_padding.tolist()[idx]
        cache.keys, cache.values = tree_map(
            lambda x: mx.contiguous(x[idx : idx + 1, :, pad : self._idx]),
            (self.keys, self.values))
        cache.offset = self._idx - pad
        return cache

    @classmethod
    def merge(cls, caches: list[QuantizedCache]) -> BatchQuantizedKVCache:
        return QuantizedCache.merge(caches)

    @property
    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return sum(x.nbytes for x in self.keys + self.values)
