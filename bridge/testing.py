"""Build a tiny, real, randomly initialised llama model (no downloads): for tests and
benchmarks, and for the engine's warm start (bridge/engine/warmup.py)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # byte alphabet plus the special tokens

DEFAULT_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nYou can call these tools:' }}"
    "{%- for t in tools %}{{- '\\n' + (t | tojson) }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

EMBED_STD = 0.02  # small tied embeddings keep greedy decoding from echoing the input token

TINY_CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still say many things,
even if most of them make little sense. Hello world, hello friend, hello again.
Once upon a time there was a little server that spoke the language of llamas. It listened
on a port, read requests, and answered with streams of tokens, one after another.
The weather today is sunny with a chance of rain in the afternoon. Please remember to
bring an umbrella, a book, and a cup of coffee or tea. Numbers like 1, 2, 3, 42 and 2024
appear in text too, as do punctuation marks: commas, periods, colons; and questions?
What is the capital of France? Paris is the capital of France. Berlin is in Germany,
Rome is in Italy, and Madrid is in Spain. The system said: you are a helpful assistant.
The user asked a question and the assistant gave an answer. Tools can be called with
arguments in JSON, such as {"name": "get_weather", "arguments": {"city": "Paris"}}.
Some words are not English at all: café, naïve, résumé, über, 日本, and emoji like ☕.
"""


def build_tiny_model(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    chat_template: str | None = None,
) -> pathlib.Path:
    """Write a tiny llama model directory loadable by ``mlx_lm.load`` and return its path."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "initializer_range": EMBED_STD,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    _write_json(out / "config.json", config)
    template = DEFAULT_CHAT_TEMPLATE if chat_template is None else chat_template
    _write_json(
        out / "tokenizer_config.json",
        _tokenizer_config(tokenizer, template, max_position_embeddings),
    )
    _write_json(out / "special_tokens_map.json", _special_tokens_map())
    _write_json(out / "generation_config.json", {"eos_token_id": eos_id, "pad_token_id": pad_id})
    _save_weights(out / "model.safetensors", _random_weights(config, seed))
    return out


def _corpus_lines() -> list[str]:
    """Return the training lines for the tokenizer (corpus repeated a few times)."""
    return [line for line in TINY_CORPUS.splitlines() if line.strip()] * 4


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    """Train a ByteLevel BPE tokenizer on ``TINY_CORPUS`` with the ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    return tokenizer


def _tokenizer_config(tokenizer: Tokenizer, chat_template: str, max_len: int) -> dict:
    """Return the ``tokenizer_config.json`` contents; an empty template means none is written."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(tok)): _added_token(tok) for tok in SPECIAL_TOKENS
        },
    }
    if chat_template:
        config["chat_template"] = chat_template
    return config


def _added_token(content: str) -> dict:
    """Return one ``added_tokens_decoder`` entry for a special token."""
    return {
        "content": content,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "single_word": False,
        "special": True,
    }


def _special_tokens_map() -> dict:
    """Return the ``special_tokens_map.json`` contents."""
    return {
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }


def _random_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
    """Return deterministic float32 weights in Hugging Face llama naming."""
    rng = np.random.RandomState(seed)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv_dim = head_dim * config["num_key_value_heads"]

    def dense(out_dim: int, in_dim: int) -> np.ndarray:
        return (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)

    embed = (rng.standard_normal((config["vocab_size"], hidden)) * EMBED_STD).astype(np.float32)
    weights = {"model.embed_tokens.weight": embed}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights[p + "self_attn.q_proj.weight"] = dense(hidden, hidden)
        weights[p + "self_attn.k_proj.weight"] = dense(kv_dim, hidden)
        weights[p + "self_attn.v_proj.weight"] = dense(kv_dim, hidden)
        weights[p + "self_attn.o_proj.weight"] = dense(hidden, hidden)
        weights[p + "mlp.gate_proj.weight"] = dense(inter, hidden)
        weights[p + "mlp.up_proj.weight"] = dense(inter, hidden)
        weights[p + "mlp.down_proj.weight"] = dense(hidden, inter)
        weights[p + "input_layernorm.weight"] = np.ones(hidden, np.float32)
        weights[p + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    weights["model.norm.weight"] = np.ones(hidden, np.float32)
    return weights


def _save_weights(file: pathlib.Path, weights: dict[str, np.ndarray]) -> None:
    """Save weights as safetensors with MLX metadata."""
    import mlx.core as mx

    mx.save_safetensors(
        str(file), {k: mx.array(v) for k, v in weights.items()}, metadata={"format": "mlx"}
    )


def _write_json(file: pathlib.Path, data: dict) -> None:
    """Write ``data`` as pretty-printed JSON."""
    file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_self_draft(source: str | os.PathLike, path: str | os.PathLike,
                     layers: int) -> pathlib.Path:
    """A speculative-decoding draft cut from a llama-style model: its first `layers` layers
    with the embeddings, final norm and head (same tokenizer files). Cheap to run, and it
    agrees with its model often enough to show what acceptance does."""
    import re
    import shutil

    import mlx.core as mx

    src, out = pathlib.Path(source), pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for file in src.iterdir():
        if file.is_file() and not file.name.endswith(".safetensors") and file.name != "config.json":
            shutil.copy2(file, out / file.name)
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = layers
    _write_json(out / "config.json", config)
    weights: dict[str, Any] = {}
    for file in sorted(src.glob("*.safetensors")):
        for name, value in mx.load(str(file)).items():
            m = re.match(r"model\.layers\.(\d+)\.", name)
            if m is None or int(m.group(1)) < layers:
                weights[name] = value
    _save_weights(out / "model.safetensors", weights)
    return out
