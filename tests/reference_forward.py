"""An independent reference forward pass: numpy on the GGUF's own tensors, in llama.cpp's layout.

It reads the file with the `gguf` package directly and follows llama.cpp's graphs (llm_build_llama,
llm_build_qwen2/3, llm_build_gemma3): GGUF tensor names, Q/K left permuted with llama's interleaved
("normal") RoPE, Gemma's norm weights used as stored (1 + w). It shares no code with
bridge.importer, so a wrong name map, a missed permutation or norm shift, or a wrong config value
shows up as disagreement.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, quants

_NEOX = {"qwen2", "qwen3", "gemma3"}  # llama.cpp's LLAMA_ROPE_TYPE_NEOX architectures


class ReferenceModel:
    """Dequantized GGUF tensors plus the hyper-parameters llama.cpp reads from metadata."""

    def __init__(self, path: str) -> None:
        r = _ScalarReader(path, "r")
        self.arch = _value(r, "general.architecture")
        a = self.arch
        self.n_layer = _value(r, f"{a}.block_count")
        self.n_embd = _value(r, f"{a}.embedding_length")
        self.n_head = _value(r, f"{a}.attention.head_count")
        self.n_head_kv = _value(r, f"{a}.attention.head_count_kv") or self.n_head
        self.head_dim = _value(r, f"{a}.attention.key_length") or self.n_embd // self.n_head
        self.eps = _value(r, f"{a}.attention.layer_norm_rms_epsilon")
        self.base = _value(r, f"{a}.rope.freq_base") or 10000.0
        self.swa = _value(r, f"{a}.attention.sliding_window")
        self.t = {}
        for t in r.tensors:
            qtype = GGMLQuantizationType(t.tensor_type)
            data = np.asarray(t.data)
            w = (data.astype(np.float32) if qtype == GGMLQuantizationType.F32
                 else quants.dequantize(data, qtype))
            shape = [int(d) for d in reversed(t.shape.tolist())]
            self.t[t.name] = w.reshape(shape).astype(np.float32)
        self.freq_factors = self.t.get("rope_freqs.weight")

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] next-token logits for every position."""
        x = self.t["token_embd.weight"][ids]
        if self.arch == "gemma3":
            x = x * np.float32(np.sqrt(self.n_embd))
        for il in range(self.n_layer):
            x = self._layer(il, x)
        x = _rms(x, self.eps) * self.t["output_norm.weight"]
        out = self.t.get("output.weight", self.t["token_embd.weight"])
        return x @ out.T

    def _w(self, il: int, name: str) -> np.ndarray | None:
        return self.t.get(f"blk.{il}.{name}")

    def _layer(self, il: int, x: np.ndarray) -> np.ndarray:
        h = _rms(x, self.eps) * self._w(il, "attn_norm.weight")
        attn = self._attention(il, h)
        if self.arch == "gemma3":
            attn = _rms(attn, self.eps) * self._w(il, "post_attention_norm.weight")
        x = x + attn
        h = _rms(x, self.eps) * self._w(il, "ffn_norm.weight")
        gate, up = h @ self._w(il, "ffn_gate.weight").T, h @ self._w(il, "ffn_up.weight").T
        act = _gelu_tanh(gate) if self.arch == "gemma3" else gate / (1 + np.exp(-gate))
        ffn = (act * up) @ self._w(il, "ffn_down.weight").T
        if self.arch == "gemma3":
            ffn = _rms(ffn, self.eps) * self._w(il, "post_ffw_norm.weight")
        return x + ffn

    def _proj(self, il: int, name: str, h: np.ndarray) -> np.ndarray:
        y = h @ self._w(il, f"{name}.weight").T
        bias = self._w(il, f"{name}.bias")
        return y if bias is None else y + bias

    def _attention(self, il: int, h: np.ndarray) -> np.ndarray:
        n = h.shape[0]
        q = self._proj(il, "attn_q", h).reshape(n, self.n_head, self.head_dim)
        k = self._proj(il, "attn_k", h).reshape(n, self.n_head_kv, self.head_dim)
        v = self._proj(il, "attn_v", h).reshape(n, self.n_head_kv, self.head_dim)
        if self._w(il, "attn_q_norm.weight") is not None:
            q = _rms(q, self.eps) * self._w(il, "attn_q_norm.weight")
            k = _rms(k, self.eps) * self._w(il, "attn_k_norm.weight")
        swa = self.arch == "gemma3" and (il + 1) % 6 != 0
        base = 10000.0 if swa else self.base
        q, k = self._rope(q, base), self._rope(k, base)
        k = np.repeat(k, self.n_head // self.n_head_kv, axis=1)
        v = np.repeat(v, self.n_head // self.n_head_kv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(self.head_dim))
        pos = np.arange(n)
        mask = pos[None, :] > pos[:, None]
        if swa and self.swa:
            mask |= (pos[:, None] - pos[None, :]) >= self.swa
        scores = np.where(mask[None], -np.inf, scores)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(n, -1)
        return self._proj(il, "attn_output", out)

    def _rope(self, x: np.ndarray, base: float) -> np.ndarray:
        n, _, d = x.shape
        theta = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        if self.freq_factors is not None:
            theta = theta / self.freq_factors
        angles = np.arange(n)[:, None] * theta[None, :]
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        if self.arch in _NEOX:  # rotate (x[i], x[i + d/2])
            a, b = x[..., : d // 2], x[..., d // 2:]
            return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1).astype(np.float32)
        a, b = x[..., 0::2], x[..., 1::2]  # llama.cpp "normal": rotate adjacent pairs
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out


class _ScalarReader(GGUFReader):
    """GGUFReader that steps over metadata arrays (the vocabulary) without reading them: the gguf
    package slices its memmap once per element, ~12 s for Gemma 3's 262k tokens. The reference
    reads only scalar metadata and the tensors."""

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        itype, count = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4,
                                                                              np.uint64)[0])
        offs = orig_offs + 12
        if itype == GGUFValueType.STRING:
            raw = memoryview(self.data)
            for _ in range(count):
                offs += 8 + int.from_bytes(raw[offs:offs + 8], "little")
        elif itype in self.gguf_scalar_to_np:
            offs += count * np.dtype(self.gguf_scalar_to_np[itype]).itemsize
        else:
            return super()._get_field_parts(orig_offs, raw_type)
        return offs - orig_offs, [self.data[orig_offs:offs]], [], [GGUFValueType.ARRAY]


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(x.astype(np.float64) ** 2, -1, keepdims=True)
    return x / np.sqrt(ms + eps).astype(np.float32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    # float32 constants: a numpy float64 scalar would promote the layers (and every later matmul
    # against the 262k-row embedding) to float64, llama.cpp computes in float32
    c = np.float32(np.sqrt(2 / np.pi))
    return np.float32(0.5) * x * (1 + np.tanh(c * (x + np.float32(0.044715) * x**3)))


def _value(r: GGUFReader, key: str):
    field = r.fields.get(key)
    if field is None:
        return None
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode()
    return field.parts[field.data[0]][0].item()


def compare(ref_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float, float]:
    """(top-1 agreement, mean KL(ref || model), max KL) over positions, in nats."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    top1 = float((ref_logits.argmax(-1) == logits.argmax(-1)).mean())
    return top1, float(kl.mean()), float(kl.max())
