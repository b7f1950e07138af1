"""Tests for bridge.modelinfo.describe: model directories built by hand in tmp_path."""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bridge.modelinfo.describe import (
    DescriptionCache,
    ModelDescription,
    describe_model,
    format_parameter_size,
    format_parameters,
    is_model_dir,
)

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "vocab_size": 64,
    "torch_dtype": "float32",
}


def write_json(path: Path, data: object) -> None:
    """Write `data` as JSON to `path`."""
    path.write_text(json.dumps(data), encoding="utf-8")


def llama_weights(dtype: type = np.float32) -> dict[str, np.ndarray]:
    """A one-layer llama-shaped set of tensors."""
    shapes = {
        "model.embed_tokens.weight": (64, 16),
        "model.layers.0.self_attn.q_proj.weight": (16, 16),
        "model.layers.0.self_attn.k_proj.weight": (8, 16),
        "model.layers.0.mlp.down_proj.weight": (16, 32),
        "model.layers.0.input_layernorm.weight": (16,),
        "model.norm.weight": (16,),
    }
    return {name: np.zeros(shape, dtype=dtype) for name, shape in shapes.items()}


def make_model(root: Path, config: dict | None = None, weights: dict | None = None) -> Path:
    """Create a minimal model dir: config.json plus model.safetensors."""
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "config.json", LLAMA_CONFIG if config is None else config)
    save_file(llama_weights() if weights is None else weights, str(root / "model.safetensors"))
    return root


def file_sizes(root: Path) -> int:
    """Sum of the sizes of the regular files directly in `root`."""
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


def test_float32_llama(tmp_path: Path) -> None:
    root = make_model(tmp_path / "llama")
    desc = describe_model(root)
    assert isinstance(desc, ModelDescription)
    assert desc.parameter_count == 64 * 16 + 16 * 16 + 8 * 16 + 16 * 32 + 16 + 16
    assert desc.architecture == "llama"
    assert desc.context_length == 4096
    assert desc.size == file_sizes(root)
    assert re.fullmatch(r"[0-9a-f]{64}", desc.digest)
    assert desc.modified_at.tzinfo == timezone.utc
    assert desc.details == {
        "parent_model": "",
        "format": "safetensors",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "2K",
        "quantization_level": "F32",
        "context_length": 4096,
        "embedding_length": 16,
    }
    assert desc.model_info == {
        "general.architecture": "llama",
        "general.parameter_count": desc.parameter_count,
        "llama.context_length": 4096,
        "llama.embedding_length": 16,
        "llama.block_count": 1,
        "llama.feed_forward_length": 32,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.attention.layer_norm_rms_epsilon": 1e-05,
        "llama.rope.freq_base": 500000.0,
        "llama.vocab_size": 64,
    }
    names = [t["name"] for t in desc.tensors]
    assert names == sorted(names)
    assert {"name": "model.norm.weight", "type": "F32", "shape": [16]} in desc.tensors
    assert desc.template == "" and desc.parameters == "" and desc.capabilities == ["completion"]


def test_bf16_dominant_type_and_default_context(tmp_path: Path) -> None:
    config = {k: v for k, v in LLAMA_CONFIG.items() if k != "max_position_embeddings"}
    weights = llama_weights(np.float16)
    weights["model.norm.weight"] = np.zeros(16, dtype=np.float32)
    desc = describe_model(make_model(tmp_path / "m", config, weights))
    assert desc.details["quantization_level"] == "F16"
    assert desc.context_length == 2048
    assert "llama.context_length" not in desc.model_info


def test_mlx_quantized_counts_unpacked_weights(tmp_path: Path) -> None:
    config = {**LLAMA_CONFIG, "quantization": {"group_size": 64, "bits": 4}}
    out_features, in_features = 32, 128
    weights = {
        # 4-bit: 8 values per uint32, one scale and bias per 64-wide group
        "model.layers.0.mlp.up_proj.weight": np.zeros((out_features, in_features // 8), np.uint32),
        "model.layers.0.mlp.up_proj.scales": np.zeros(
            (out_features, in_features // 64), np.float16
        ),
        "model.layers.0.mlp.up_proj.biases": np.zeros(
            (out_features, in_features // 64), np.float16
        ),
        "model.norm.weight": np.zeros(16, np.float16),
    }
    desc = describe_model(make_model(tmp_path / "q4", config, weights))
    assert desc.parameter_count == out_features * in_features + 16
    assert desc.details["quantization_level"] == "Q4"
    assert {"name": "model.layers.0.mlp.up_proj.weight", "type": "U32", "shape": [32, 16]} in (
        desc.tensors
    )


def test_mlx_quantized_per_layer_bits_and_quantization_config(tmp_path: Path) -> None:
    quant = {"group_size": 64, "bits": 4, "lm_head": {"group_size": 64, "bits": 8}}
    config = {**LLAMA_CONFIG, "quantization_config": quant}
    weights = {
        "lm_head.weight": np.zeros((10, 64 // 4), np.uint32),
        "lm_head.scales": np.zeros((10, 1), np.float16),
        "lm_head.biases": np.zeros((10, 1), np.float16),
        "proj.weight": np.zeros((10, 64 // 8), np.uint32),
        "proj.scales": np.zeros((10, 1), np.float16),
        "proj.biases": np.zeros((10, 1), np.float16),
    }
    desc = describe_model(make_model(tmp_path / "mixed", config, weights))
    assert desc.parameter_count == 10 * 64 + 10 * 64
    assert desc.details["quantization_level"] == "Q4"


def test_gemma3_reads_text_config(tmp_path: Path) -> None:
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "max_position_embeddings": 131072,
            "sliding_window": 1024,
            "head_dim": 4,
        },
        "vision_config": {"hidden_size": 99},
    }
    desc = describe_model(make_model(tmp_path / "gemma", config))
    assert desc.architecture == "gemma3"
    assert desc.details["families"] == ["gemma3"]
    assert desc.context_length == 131072
    assert desc.details["embedding_length"] == 16
    assert desc.model_info["gemma3.embedding_length"] == 16
    assert desc.model_info["gemma3.block_count"] == 2
    assert desc.model_info["gemma3.attention.sliding_window"] == 1024
    assert desc.model_info["gemma3.attention.key_length"] == 4


@pytest.mark.parametrize(
    ("model_type", "family"),
    [("gemma3_text", "gemma3"), ("qwen2", "qwen2"), ("mistral", "mistral"), ("phi3", "phi3")],
)
def test_family_names(tmp_path: Path, model_type: str, family: str) -> None:
    desc = describe_model(make_model(tmp_path / model_type, {"model_type": model_type}))
    assert desc.details["family"] == family
    assert desc.model_info["general.architecture"] == family


def test_template_from_tokenizer_config_with_tools(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    template = "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}"
    write_json(root / "tokenizer_config.json", {"chat_template": template})
    desc = describe_model(root)
    assert desc.template == template
    assert desc.capabilities == ["completion", "tools"]


def test_template_jinja_file_wins_and_detects_thinking(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    write_json(root / "tokenizer_config.json", {"chat_template": "old"})
    jinja = (
        "{%- if tools %}x{% endif %}{% if enable_thinking is false %}<think>\n\n</think>{% endif %}"
    )
    (root / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    desc = describe_model(root)
    assert desc.template == jinja
    assert desc.capabilities == ["completion", "tools", "thinking"]


def test_template_list_form_and_chat_template_json(tmp_path: Path) -> None:
    root = make_model(tmp_path / "list")
    templates = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "<think>"}]
    write_json(root / "tokenizer_config.json", {"chat_template": templates})
    assert describe_model(root).template == "<think>"
    assert describe_model(root).capabilities == ["completion", "thinking"]
    other = make_model(tmp_path / "json")
    write_json(other / "chat_template.json", {"chat_template": "plain {{ messages }}"})
    assert describe_model(other).template == "plain {{ messages }}"
    assert describe_model(other).capabilities == ["completion"]


def test_embedding_only_model(tmp_path: Path) -> None:
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 16}
    assert describe_model(make_model(tmp_path / "bert", config)).capabilities == ["embedding"]


def test_parameters_from_generation_config_and_eos(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    write_json(
        root / "tokenizer_config.json",
        {
            "eos_token": {"content": "<|im_end|>", "special": True},
            "added_tokens_decoder": {"3": {"content": "<|im_end|>"}},
        },
    )
    write_json(
        root / "tokenizer.json",
        {
            "added_tokens": [
                {"id": 3, "content": "<|im_end|>"},
                {"id": 4, "content": "<|endoftext|>"},
            ]
        },
    )
    write_json(
        root / "generation_config.json",
        {
            "eos_token_id": [3, 4],
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 20,
            "repetition_penalty": 1.0,
            "do_sample": True,
        },
    )
    assert describe_model(root).parameters == "\n".join(
        [
            "repeat_penalty                 1",
            'stop                           "<|im_end|>"',
            'stop                           "<|endoftext|>"',
            "temperature                    0.6",
            "top_k                          20",
            "top_p                          0.95",
        ]
    )


def test_parameters_eos_string_and_missing_ids(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    write_json(root / "tokenizer_config.json", {"eos_token": "</s>"})
    write_json(root / "generation_config.json", {"eos_token_id": 99, "temperature": None})
    assert describe_model(root).parameters == 'stop                           "</s>"'


def test_broken_optional_files_are_ignored(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    (root / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    (root / "generation_config.json").write_text("[1, 2]", encoding="utf-8")
    desc = describe_model(root)
    assert (desc.template, desc.parameters, desc.capabilities) == ("", "", ["completion"])


def test_digest_stable_and_sensitive_to_changes(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    first = describe_model(root).digest
    assert describe_model(root).digest == first
    write_json(root / "config.json", {**LLAMA_CONFIG, "vocab_size": 65})
    changed = describe_model(root).digest
    assert changed != first
    weights = root / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert describe_model(root).digest != changed


def test_hidden_files_do_not_count(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    before = describe_model(root)
    (root / ".DS_Store").write_bytes(b"x" * 100)
    (root / ".cache").mkdir()
    (root / ".cache" / "blob").write_bytes(b"x" * 100)
    after = describe_model(root)
    assert (after.size, after.digest) == (before.size, before.digest)


def test_hf_cache_symlinks_count_target_size(tmp_path: Path) -> None:
    source = make_model(tmp_path / "source")
    blobs = tmp_path / "hub" / "blobs"
    snapshot = tmp_path / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(source.iterdir())):
        blob = blobs / f"blob{i}"
        file.rename(blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (snapshot / "loop").symlink_to(snapshot, target_is_directory=True)
    (snapshot / "dangling.json").symlink_to(tmp_path / "missing")
    desc = describe_model(snapshot)
    assert desc.size == sum(p.stat().st_size for p in blobs.iterdir())
    assert desc.parameter_count > 0
    assert is_model_dir(snapshot)


def test_only_loader_weight_files_are_read(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    save_file(llama_weights(), str(root / "consolidated.safetensors"))
    alone = describe_model(make_model(tmp_path / "alone"))
    assert describe_model(root).parameter_count == alone.parameter_count


def test_corrupt_header_raises_value_error(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    bad = root / "model.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # unterminated
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        describe_model(root)
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="safetensors"):
        describe_model(root)
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}'
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ValueError, match="bad entry"):
        describe_model(root)


def test_missing_or_bad_config_raises_value_error(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    (root / "config.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match="config.json"):
        describe_model(root)
    (root / "config.json").unlink()
    with pytest.raises(ValueError, match=re.escape(str(root))):
        describe_model(root)
    with pytest.raises(ValueError, match="not a model directory"):
        describe_model(tmp_path / "nowhere")


def test_is_model_dir(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    assert is_model_dir(root)
    (root / "model.safetensors").unlink()
    assert not is_model_dir(root)
    assert not is_model_dir(tmp_path / "nowhere")


def test_dir_without_weights_still_describes(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write_json(root / "config.json", {"model_type": "qwen3", "torch_dtype": "bfloat16"})
    desc = describe_model(root)
    assert (desc.parameter_count, desc.tensors) == (0, [])
    assert desc.details["quantization_level"] == "BF16"
    assert desc.details["parameter_size"] == "0"


def test_cache_reuses_and_invalidates(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    cache = DescriptionCache()
    first = cache.get(root)
    assert cache.get(str(root)) is first
    write_json(root / "config.json", {**LLAMA_CONFIG, "max_position_embeddings": 8192})
    second = cache.get(root)
    assert second is not first and second.context_length == 8192
    assert len(cache) == 1  # the stale entry for the same directory is dropped
    assert DescriptionCache().get(root) is not second  # caches are independent instances
    cache.clear()
    assert len(cache) == 0


def test_cache_is_thread_safe(tmp_path: Path) -> None:
    roots = [make_model(tmp_path / f"m{i}") for i in range(4)]
    cache = DescriptionCache()
    start = threading.Barrier(8)

    def describe(i: int) -> str:
        start.wait()
        return cache.get(roots[i % 4]).digest

    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = list(pool.map(describe, range(8)))
    assert digests[:4] == digests[4:]
    assert len(cache) == 4


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (999, "999"), (1_000_000, "1M"), (134_515_008, "134.52M"), (12_000_000_000, "12B")],
)
def test_format_parameter_size(n: int, text: str) -> None:
    assert format_parameter_size(n) == text


def test_format_parameters_go_values() -> None:
    text = format_parameters(
        {"b": [True], "small": [0.00001], "big": [1e6], "s": ['a"b\\c', "日本"], "n": [1.5e-4]}
    )
    assert text.splitlines() == [
        "b                              true",
        "big                            1e+06",
        "n                              0.00015",
        's                              "a\\"b\\\\c"',
        's                              "日本"',
        "small                          1e-05",
    ]
