"""Read a GGUF file: metadata values and dequantized tensors (numpy, through the `gguf` package)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.importer.errors import ImportFailed

GGUF_MAGIC = b"GGUF"
# What common Ollama / llama.cpp downloads use; gguf.quants dequantizes each of them in numpy.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q4_K", "Q5_K", "Q6_K")


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as stored: GGUF name, ggml type name, numpy-order shape, stored bytes."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    nbytes: int
    _raw: Any

    def to_numpy(self) -> np.ndarray:
        """Dequantize to float32 in numpy order (rows = ggml ne[1], i.e. Hugging Face (out, in))."""
        from gguf import GGMLQuantizationType, quants

        qtype = GGMLQuantizationType[self.type_name]
        data = self._raw.data
        if qtype == GGMLQuantizationType.F32:
            out = np.asarray(data, dtype=np.float32)
        else:
            out = quants.dequantize(np.asarray(data), qtype)
        return np.ascontiguousarray(out.reshape(self.shape), dtype=np.float32)


class GGUFFile:
    """Metadata and tensors of one GGUF file (memory-mapped, read-only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_magic(self.path)
        try:
            self._reader = _reader_class()(self.path, "r")
        except Exception as exc:  # the gguf package raises bare ValueErrors and struct errors
            raise ImportFailed(f"{self.path} is not a readable GGUF file: {exc}") from None
        self.metadata = {k: _field_value(f) for k, f in self._reader.fields.items()
                         if not k.startswith("GGUF.")}
        self.tensors = {t.name: _tensor(t) for t in self._reader.tensors}

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """`<architecture>.<suffix>`, e.g. arch_get("block_count")."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def check_types(self) -> None:
        """Fail before any work when a tensor uses a quantization we cannot dequantize."""
        bad = sorted({t.type_name for t in self.tensors.values()
                      if t.type_name not in SUPPORTED_TYPES})
        if bad:
            raise ImportFailed(
                f"unsupported GGUF tensor type(s) {', '.join(bad)} in {self.path.name}; "
                f"supported: {', '.join(SUPPORTED_TYPES)}"
            )

    def file_type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts

    def iter_tensors(self) -> Iterator[GGUFTensor]:
        yield from self.tensors.values()


def check_magic(path: Path) -> None:
    """ImportFailed unless `path` is a file starting with the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ImportFailed(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ImportFailed(f"{path} is not a GGUF file (no GGUF magic)")


def _reader_class() -> type:
    """GGUFReader reading each metadata array in one step. The gguf package slices its memmap once
    per element (recursing per array item): ~15 s of a Gemma 3 import went to its 262k-token
    vocabulary, ~3 s of SmolLM2's. Same ReaderField shapes for what `_field_value` reads."""
    from gguf import GGUFReader, GGUFValueType

    class FastArrays(GGUFReader):
        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list, list]:
            if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype, alen = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
            itype, count, start = GGUFValueType(int(raw_itype[0])), int(alen[0]), orig_offs + 12
            types = [GGUFValueType.ARRAY, itype]
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:  # one view of the whole array: field.data = [its index]
                values = self._get(start, nptype, count)
                return 12 + int(values.nbytes), [raw_itype, alen, values], [2], types
            if itype != GGUFValueType.STRING:  # nested arrays: the package's own walk
                return super()._get_field_parts(orig_offs, raw_type)
            raw = memoryview(self.data)
            parts: list[Any] = [raw_itype, alen]
            offs = start
            for _ in range(count):  # (uint64 length, bytes) pairs; field.data = the bytes
                size = int.from_bytes(raw[offs:offs + 8], "little")
                parts.append(np.frombuffer(raw, np.uint8, size, offs + 8))
                offs += 8 + size
            return offs - orig_offs, parts, list(range(2, 2 + count)), types

    return FastArrays


def _tensor(t: Any) -> GGUFTensor:
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne[] is innermost-first
    return GGUFTensor(t.name, t.tensor_type.name, shape, int(t.n_bytes), t)


def _field_value(field: Any) -> Any:
    """A metadata field as plain Python: str, int, float, bool or a list of them."""
    from gguf import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        if len(field.types) > 1 and field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        if len(field.types) > 1 and field.types[1] == GGUFValueType.ARRAY:
            return None  # nested arrays: no architecture we import uses them
        return np.concatenate([field.parts[i] for i in field.data]).tolist() if field.data else []
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    value = field.parts[field.data[0]][0]
    return value.item() if hasattr(value, "item") else value
