"""Build small GGUF files the way llama.cpp's converter would, from known float weights.

`write_gguf` applies convert_hf_to_gguf.py's transforms (llama Q/K permutation, Gemma norm + 1)
and quantizes 2-D tensors to the requested type (the K-quants with the simple encoders below, the
`gguf` package has no K-quant encoder), so a test can compare an import with the original weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

QK_K = 256
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER, TOKEN_BYTE = 1, 3, 4, 6


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _pack_scales_k(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins into 12 bytes (inverse of gguf.quants.Q4_K.get_scale_min)."""
    d = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    m = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([d, m, md], axis=1).astype(np.uint8)


def _affine_k(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    """Per 32-value sub-block scale/min quantized to 6 bits under fp16 super-block factors."""
    sub = blocks.reshape(-1, 8, 32)
    lo = np.minimum(sub.min(-1), 0)
    scale = (sub.max(-1) - lo) / levels
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = ((-lo).max(-1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / np.where(d == 0, 1, d)[:, None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(-lo / np.where(dmin == 0, 1, dmin)[:, None]), 0, 63).astype(np.uint8)
    step = (d[:, None] * sc)[..., None]
    q = np.round((sub + (dmin[:, None] * mn)[..., None]) / np.where(step == 0, 1, step))
    return d, dmin, sc, mn, np.clip(q, 0, levels).astype(np.uint8)


def q4_k(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, QK_K)
    d, dmin, sc, mn, q = _affine_k(blocks, 15)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(len(blocks), 128)
    return np.concatenate([_f16(d), _f16(dmin), _pack_scales_k(sc, mn), qs], axis=1)


def q5_k(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, QK_K)
    d, dmin, sc, mn, q = _affine_k(blocks, 31)
    low = q & 0x0F
    qs = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(len(blocks), 128)
    high = (q >> 4) & 1  # (n, 8, 32): sub-block j sets bit j of byte k
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1).astype(np.uint8)
    return np.concatenate([_f16(d), _f16(dmin), _pack_scales_k(sc, mn), qh, qs], axis=1)


def q6_k(x: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, QK_K)
    n = len(blocks)
    sub = blocks.reshape(n, 16, 16)
    scale = np.abs(sub).max(-1) / 31
    d = (scale.max(-1) / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / np.where(d == 0, 1, d)[:, None]), -128, 127).astype(np.int8)
    step = (d[:, None] * sc)[..., None]
    q = (np.clip(np.round(sub / np.where(step == 0, 1, step)), -32, 31) + 32).astype(np.uint8)
    q = q.reshape(n, 8, 32)  # group g = h*4 + s*2 + o (see gguf.quants.Q6_K)
    ql = np.zeros((n, 2, 64), np.uint8)
    qh = np.zeros((n, 2, 32), np.uint8)
    for g in range(8):
        h, s, o = g // 4, (g % 4) // 2, g % 2
        ql[:, h, o * 32:(o + 1) * 32] |= (q[:, g] & 0x0F) << (4 * s)
        qh[:, h] |= ((q[:, g] >> 4) & 0x03) << (2 * (g % 4))
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), _f16(d)],
                          axis=1)


_K_ENCODERS = {"Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """Stored form of float32 `x` (rows kept) in ggml type `type_name`."""
    if type_name in _K_ENCODERS:
        rows = x.shape[0]
        return _K_ENCODERS[type_name](x.astype(np.float32)).reshape(rows, -1)
    return gguf.quants.quantize(x.astype(np.float32), T[type_name])


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


_LAYER = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
_LAYER_BY_ARCH = {
    "gemma3": {**_LAYER, "pre_feedforward_layernorm": "ffn_norm",
               "post_attention_layernorm": "post_attention_norm",
               "post_feedforward_layernorm": "post_ffw_norm"},
}


def gguf_name(arch: str, hf: str) -> str:
    glob = {"model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
    if hf in glob:
        return glob[hf]
    parts = hf.split(".")
    layer, kind = parts[2], parts[-1]
    mod = ".".join(parts[3:-1])
    table = _LAYER_BY_ARCH.get(arch, {**_LAYER, "post_attention_layernorm": "ffn_norm"})
    return f"blk.{layer}.{table[mod]}.{kind}"


def random_weights(arch: str, cfg: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 weights with non-trivial norms and (qwen2) biases."""
    rng = np.random.default_rng(seed)
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_dim, kv_dim = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def dense(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def norm(n: int) -> np.ndarray:  # gemma stores w with the model computing 1 + w
        base = 0.0 if arch == "gemma3" else 1.0
        return (base + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight":
         (rng.standard_normal((cfg["vocab_size"], h)) * 0.5).astype(np.float32),
         "model.norm.weight": norm(h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {p + "self_attn.q_proj.weight": dense(q_dim, h),
              p + "self_attn.k_proj.weight": dense(kv_dim, h),
              p + "self_attn.v_proj.weight": dense(kv_dim, h),
              p + "self_attn.o_proj.weight": dense(h, q_dim),
              p + "mlp.gate_proj.weight": dense(inter, h),
              p + "mlp.up_proj.weight": dense(inter, h),
              p + "mlp.down_proj.weight": dense(h, inter), p + "input_layernorm.weight": norm(h),
              p + "post_attention_layernorm.weight": norm(h)}
        if arch == "qwen2":
            for name, n in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                w[p + f"self_attn.{name}_proj.bias"] = (
                    (0.1 * rng.standard_normal(n)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        if arch == "gemma3":
            w[p + "pre_feedforward_layernorm.weight"] = norm(h)
            w[p + "post_feedforward_layernorm.weight"] = norm(h)
    return w


def to_gguf_tensor(arch: str, hf: str, x: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """The converter's transforms for one tensor."""
    if arch == "llama" and ".q_proj." in hf:
        return permute(x, cfg["num_attention_heads"])
    if arch == "llama" and ".k_proj." in hf:
        return permute(x, cfg["num_key_value_heads"])
    if arch == "gemma3" and hf.endswith("norm.weight"):
        return x + 1
    return x


def bpe_tokenizer_meta(tokenizer_json: Path) -> dict[str, Any]:
    """GGUF tokenizer metadata (gpt2 model) from a ByteLevel BPE tokenizer.json."""
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in data["added_tokens"] if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {"model": "gpt2", "pre": "gpt2", "tokens": tokens, "merges": merges,
            "types": [TOKEN_CONTROL if t in special else TOKEN_NORMAL for t in tokens],
            "eos": tokens.index("<|im_end|>"), "bos": None, "add_bos": False}


def spm_tokenizer_meta() -> dict[str, Any]:
    """A small SentencePiece-style vocabulary (gemma-like: no space prefix, BOS added)."""
    control = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    pieces = ["\u2581", "t", "h", "e", "c", "a", "\u2581t", "he", "\u2581the", "\u2581c", "at",
              "\u2581cat", "\u2581a", "s", "\u2581s", "at\u2581"]
    tokens = control + [f"<0x{i:02X}>" for i in range(256)] + pieces
    types = [TOKEN_CONTROL] * len(control) + [TOKEN_BYTE] * 256 + [TOKEN_NORMAL] * len(pieces)
    scores = [0.0] * (len(control) + 256) + [-float(i) for i in range(len(pieces))]
    return {"model": "llama", "pre": "default", "tokens": tokens, "types": types, "scores": scores,
            "eos": 1, "bos": 2, "unk": 3, "add_bos": True, "add_space_prefix": False}


def write_gguf(path: Path, arch: str, cfg: dict[str, Any], weights: dict[str, np.ndarray],
               tok: dict[str, Any], qtype: str = "F32", chat_template: str | None = None,
               strings: dict[str, str] | None = None) -> Path:
    """Write `weights` (Hugging Face names) as a GGUF of architecture `arch`; `strings` are
    extra string keys (general.basename, ...)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (strings or {}).items():
        w.add_string(key, value)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    if arch == "gemma3":
        w.add_sliding_window(cfg.get("sliding_window", 512))
    w.add_tokenizer_model(tok["model"])
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if "scores" in tok:
        w.add_token_scores(tok["scores"])
    if tok.get("merges"):
        w.add_token_merges(tok["merges"])
    w.add_eos_token_id(tok["eos"])
    if tok.get("bos") is not None:
        w.add_bos_token_id(tok["bos"])
    if tok.get("unk") is not None:
        w.add_unk_token_id(tok["unk"])
    w.add_add_bos_token(tok["add_bos"])
    if "add_space_prefix" in tok:
        w.add_add_space_prefix(tok["add_space_prefix"])
    if chat_template:
        w.add_chat_template(chat_template)
    for hf, x in weights.items():
        data = to_gguf_tensor(arch, hf, x, cfg)
        kind = qtype if data.ndim == 2 else "F32"  # llama.cpp keeps norms and biases in F32
        stored = data.astype(np.float32) if kind == "F32" else quantize(data, kind)
        if kind in ("F32", "F16"):
            stored = stored.astype(np.float16) if kind == "F16" else stored
            w.add_tensor(gguf_name(arch, hf), stored)
        else:
            w.add_tensor(gguf_name(arch, hf), stored, raw_dtype=T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
