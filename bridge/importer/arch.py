"""Per-architecture knowledge: GGUF tensor names -> Hugging Face names, undoing llama.cpp's
transforms.

llama.cpp's converter (convert_hf_to_gguf.py) permutes llama's Q/K rows for its interleaved RoPE
and stores Gemma's RMSNorm weights as `1 + w`; both are undone here so mlx-lm sees the original
Hugging Face tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from bridge.importer.errors import ImportFailed

_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)\.(weight|bias)")
_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_COMMON_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA3_LAYER = {
    **_COMMON_LAYER,
    **_QK_NORM,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Tensors llama.cpp derives from the config and mlx-lm recomputes itself.
_SKIPPED = frozenset({"rope_freqs.weight"})


@dataclass(frozen=True)
class Arch:
    """How one GGUF architecture maps onto an mlx-lm model type."""

    gguf_name: str
    model_type: str
    family: str
    layer_names: dict[str, str]
    permute_qk: bool = False  # llama: undo convert_hf_to_gguf's LlamaModel.permute
    norm_shift: float = 0.0  # gemma3: stored RMSNorm weights are w + 1
    extra_config: dict[str, object] = field(default_factory=dict)


ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch("llama", "llama", "llama", _COMMON_LAYER, permute_qk=True),
    "qwen2": Arch("qwen2", "qwen2", "qwen2", _COMMON_LAYER),
    "qwen3": Arch("qwen3", "qwen3", "qwen3", {**_COMMON_LAYER, **_QK_NORM}),
    "gemma3": Arch("gemma3", "gemma3_text", "gemma3", _GEMMA3_LAYER, norm_shift=1.0),
}


def get_arch(name: str) -> Arch:
    """The Arch for a GGUF `general.architecture`, or ImportFailed naming it."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ImportFailed(
            f"unsupported architecture '{name or '?'}': mlx-bridge imports "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


def hf_name(arch: Arch, gguf_name: str) -> str | None:
    """The Hugging Face tensor name, None for tensors to skip; ImportFailed for unknown ones."""
    if gguf_name in _SKIPPED:
        return None
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL and kind == "weight":
        return f"{_GLOBAL[base]}.weight"
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in arch.layer_names:
        return f"model.layers.{m.group(1)}.{arch.layer_names[m.group(2)]}.{m.group(3)}"
    raise ImportFailed(f"unexpected tensor '{gguf_name}' for architecture '{arch.gguf_name}'")


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's permute(): interleaved RoPE rows back to Hugging Face's halves."""
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def to_hf(arch: Arch, name: str, w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Undo the converter's transforms on one dequantized tensor (already given its HF name)."""
    if arch.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
        return unpermute(w, n_head)
    if arch.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
        return unpermute(w, n_head_kv)
    if arch.norm_shift and name.endswith("norm.weight"):
        return w - np.float32(arch.norm_shift)
    return w
