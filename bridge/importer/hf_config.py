"""Rebuild config.json (and generation_config.json) from GGUF metadata."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.importer.arch import Arch
from bridge.importer.errors import ImportFailed
from bridge.importer.gguf_file import GGUFFile

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
_GEMMA3_27B_LAYERS = 62  # llama.cpp scales its queries by hidden/heads instead of head_dim


def _f32(value: float) -> float:
    """GGUF stores float32: print it the way the original config wrote it (1e-05, not 9.99e-06)."""
    return float(repr(np.float32(value)).replace("np.float32(", "").rstrip(")"))


def _required(g: GGUFFile, suffix: str) -> Any:
    value = g.arch_get(suffix)
    if value is None:
        raise ImportFailed(f"GGUF metadata lacks {g.architecture}.{suffix}")
    return value


def build_config(g: GGUFFile, arch: Arch) -> dict[str, Any]:
    """config.json for mlx-lm's model class of this architecture."""
    hidden = int(_required(g, "embedding_length"))
    heads = int(_required(g, "attention.head_count"))
    head_dim = int(g.arch_get("attention.key_length") or hidden // heads)
    embed = g.tensors.get("token_embd.weight")
    if embed is None:
        raise ImportFailed("GGUF has no token_embd.weight tensor")
    config: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[arch.model_type]],
        "model_type": arch.model_type,
        "hidden_size": hidden,
        "num_hidden_layers": int(_required(g, "block_count")),
        "intermediate_size": int(_required(g, "feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(g.arch_get("attention.head_count_kv") or heads),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(g.arch_get("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": embed.shape[0],
        "max_position_embeddings": int(g.arch_get("context_length") or 2048),
        "rope_theta": _f32(g.arch_get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        **_token_ids(g),
    }
    scaling = rope_scaling(g, head_dim, config["rope_theta"])
    if scaling:
        config["rope_scaling"] = scaling
    if arch.model_type == "gemma3_text":
        config.update(_gemma3(g, hidden, heads, head_dim, config["num_hidden_layers"]))
    if arch.model_type == "qwen2":
        config["sliding_window"] = config["max_position_embeddings"]
    return config


def _gemma3(g: GGUFFile, hidden: int, heads: int, head_dim: int, layers: int) -> dict[str, Any]:
    """Gemma 3 values llama.cpp hard-codes rather than stores (see its llm_build_gemma3)."""
    scalar = hidden // heads if layers == _GEMMA3_27B_LAYERS else head_dim
    return {
        "query_pre_attn_scalar": scalar,
        "sliding_window": int(g.arch_get("attention.sliding_window") or 4096),
        "sliding_window_pattern": 6,
        "rope_local_base_freq": 10000.0,
        "hidden_activation": "gelu_pytorch_tanh",
    }


def _token_ids(g: GGUFFile) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    bos = g.get("tokenizer.ggml.bos_token_id")
    if bos is not None:
        ids["bos_token_id"] = int(bos)
    eos = eos_token_ids(g)
    if eos:
        ids["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    pad = g.get("tokenizer.ggml.padding_token_id")
    if pad is not None:
        ids["pad_token_id"] = int(pad)
    return ids


def eos_token_ids(g: GGUFFile) -> list[int]:
    """EOS and end-of-turn ids: generation stops at either (llama.cpp's llama_vocab_is_eog)."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                "tokenizer.ggml.eom_token_id"):
        value = g.get(key)
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def rope_scaling(g: GGUFFile, head_dim: int, base: float) -> dict[str, Any] | None:
    """Hugging Face rope_scaling from GGUF metadata, or from llama 3's rope_freqs tensor."""
    kind = g.arch_get("rope.scaling.type")
    factor = g.arch_get("rope.scaling.factor")
    if "rope_freqs.weight" in g.tensors:
        return _llama3_scaling(g, head_dim, base)
    if kind in (None, "none") or not factor:
        return None
    if kind == "linear":
        return {"type": "linear", "rope_type": "linear", "factor": _f32(factor)}
    if kind == "yarn":
        original = g.arch_get("rope.scaling.original_context_length")
        return {"type": "yarn", "rope_type": "yarn", "factor": _f32(factor),
                "original_max_position_embeddings": int(original or 0) or None}
    raise ImportFailed(f"unsupported RoPE scaling type '{kind}'")


def _llama3_scaling(g: GGUFFile, head_dim: int, base: float) -> dict[str, Any]:
    """Recover llama3 rope parameters: the tensor holds the per-frequency divisors they produce."""
    freqs = g.tensors["rope_freqs.weight"].to_numpy().astype(np.float64)
    factor = float(freqs.max())
    original = int(g.arch_get("rope.scaling.original_context_length") or 8192)
    for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0)):
        divisors = _llama3_divisors(head_dim, base, factor, low, high, original)
        if np.allclose(divisors, freqs, rtol=1e-3):
            return {"rope_type": "llama3", "type": "llama3", "factor": factor,
                    "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": original}
    raise ImportFailed("rope_freqs tensor does not match llama3 RoPE scaling; cannot rebuild it")


def _llama3_divisors(dim: int, base: float, factor: float, low: float, high: float,
                     original: int) -> np.ndarray:
    """What convert_hf_to_gguf.py writes into rope_freqs for llama 3 scaling."""
    wavelens = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = (original / wavelens - low) / (high - low)
    out = 1 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelens < original / high, 1.0, out)
    return np.where(wavelens > original / low, factor, out)
