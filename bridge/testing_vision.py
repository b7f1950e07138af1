"""Build a tiny, real, randomly initialised Qwen2-VL model for tests and benchmarks (no downloads).

The directory holds what an mlx-community Qwen2-VL conversion holds (config.json with a
`vision_config`, safetensors in mlx-vlm's naming, tokenizer files, preprocessor_config.json), so
`mlx_vlm.load` reads it through the same code as a real checkpoint. The weights are mlx-vlm's own
module initialisation (seeded), the tokenizer a small BPE trained with `tokenizers`, the chat
template Qwen2-VL's (an `{"type": "image"}` content part becomes the vision placeholder).
Images are cut to at most `max_pixels` (56x56 by default: 4 image tokens), so a request with an
image costs milliseconds on a CPU.
"""

from __future__ import annotations

import os
import pathlib

from bridge.testing import _corpus_lines, _write_json

VISION_SPECIALS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

QWEN2_VL_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]


def build_tiny_vlm(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_dim: int = 32,
    vision_depth: int = 1,
    max_pixels: int = 56 * 56,
    max_position_embeddings: int = 2048,
) -> pathlib.Path:
    """Write a tiny qwen2_vl model directory loadable by ``mlx_vlm.load``; return its path."""
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {tok: tokenizer.token_to_id(tok) for tok in VISION_SPECIALS}
    head_dim = hidden_size // num_heads
    config = {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": 2 * hidden_size,
        "rms_norm_eps": 1e-6,
        "vocab_size": tokenizer.get_vocab_size(),
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": 10000.0,
        # mrope splits each head's rotary half into (time, height, width) sections.
        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_sections(head_dim)},
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "bos_token_id": None,
        "eos_token_id": ids[EOS_TOKEN],
        "pad_token_id": ids[PAD_TOKEN],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_config": {
            "model_type": "qwen2_vl", "depth": vision_depth, "embed_dim": vision_dim,
            "hidden_size": hidden_size, "num_heads": 2, "patch_size": 14,
            "spatial_patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "in_channels": 3, "mlp_ratio": 2,
        },
    }
    _write_json(out / "config.json", config)
    _write_json(out / "tokenizer_config.json", _tokenizer_config(ids, max_position_embeddings))
    _write_json(out / "special_tokens_map.json", {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN})
    _write_json(out / "generation_config.json", {"eos_token_id": ids[EOS_TOKEN]})
    image_cfg = {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "min_pixels": 28 * 28, "max_pixels": max_pixels,
        "image_mean": _MEAN, "image_std": _STD, "do_rescale": True, "do_normalize": True,
        "do_convert_rgb": True,
    }
    # All three files written: mlx-vlm asks the Hugging Face hub for any one that is missing.
    _write_json(out / "preprocessor_config.json", image_cfg)
    _write_json(out / "video_preprocessor_config.json", image_cfg)
    _write_json(out / "processor_config.json", {"processor_class": "Qwen2VLProcessor",
                                                "chat_template": QWEN2_VL_TEMPLATE})
    (out / "chat_template.json").write_text(
        '{"chat_template": ' + _json_str(QWEN2_VL_TEMPLATE) + "}\n", encoding="utf-8")
    _save_random_weights(out, config, seed)
    return out


def _mrope_sections(head_dim: int) -> list[int]:
    """Three sections adding up to half the head dimension (Qwen2-VL: 16, 24, 24 of 64)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _json_str(text: str) -> str:
    import json

    return json.dumps(text)


def _train_tokenizer(vocab_size: int,  # noqa: ANN202 - tokenizers.Tokenizer, imported lazily
                     specials: tuple[str, ...] = VISION_SPECIALS):
    """A ByteLevel BPE with the model's special tokens (the vision markers among them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    return tokenizer


def _tokenizer_config(ids: dict[str, int], max_len: int) -> dict:
    decoder = {str(i): {"content": tok, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False, "special": True} for tok, i in ids.items()}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN, "unk_token": None, "model_max_length": max_len,
        "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": decoder, "chat_template": QWEN2_VL_TEMPLATE,
        "processor_class": "Qwen2VLProcessor",
    }


def _save_random_weights(out: pathlib.Path, config: dict, seed: int) -> None:
    """mlx-vlm's own modules, seeded and saved in its naming (what a conversion writes)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models.qwen2_vl import Model as Qwen2VL
    from mlx_vlm.models.qwen2_vl import ModelConfig, TextConfig, VisionConfig

    mx.random.seed(seed)
    model_config = ModelConfig.from_dict(dict(config))
    model_config.vision_config = VisionConfig.from_dict(config["vision_config"])
    model_config.text_config = TextConfig.from_dict(dict(config))
    model = Qwen2VL(model_config)
    weights = dict(tree_flatten(model.parameters()))
    # Small token embeddings (tied to the output) keep greedy decoding from echoing the input.
    embed = "language_model.model.embed_tokens.weight"
    weights[embed] = weights[embed] * 0.02
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})


GEMMA3_SPECIALS: tuple[str, ...] = (
    "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
    "<end_of_image>", "<image_soft_token>",
)
GEMMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<start_of_image>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)


def build_tiny_gemma3_vlm(path: str | os.PathLike, *, seed: int = 0, vocab_size: int = 400,
                          hidden_size: int = 64, num_layers: int = 2) -> pathlib.Path:
    """Write a tiny Gemma 3 VLM (SigLIP tower, 28x28-pixel images -> 4 image tokens, sliding
    window layers) loadable by ``mlx_vlm.load``; return its path."""
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size, GEMMA3_SPECIALS)
    tokenizer.save(str(out / "tokenizer.json"))
    ids = {tok: tokenizer.token_to_id(tok) for tok in GEMMA3_SPECIALS}
    text = {
        "model_type": "gemma3_text", "hidden_size": hidden_size, "num_hidden_layers": num_layers,
        "intermediate_size": 2 * hidden_size, "num_attention_heads": 4, "head_dim": 16,
        "num_key_value_heads": 2, "vocab_size": tokenizer.get_vocab_size(),
        "query_pre_attn_scalar": 16, "sliding_window": 512, "sliding_window_pattern": 2,
        "mm_tokens_per_image": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    }
    config = {
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "hidden_size": hidden_size, "vocab_size": text["vocab_size"], "mm_tokens_per_image": 4,
        "image_token_index": ids["<image_soft_token>"], "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"], "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"], "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "torch_dtype": "float32", "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "num_hidden_layers": 1,
                          "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                          "patch_size": 14, "image_size": 28, "layer_norm_eps": 1e-6},
    }
    _write_json(out / "config.json", config)
    decoder = {str(i): {"content": tok, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False, "special": True} for tok, i in ids.items()}
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>",
        "eos_token": "<end_of_turn>", "pad_token": "<pad>", "unk_token": None,
        "add_bos_token": False, "add_eos_token": False, "model_max_length": 2048,
        "added_tokens_decoder": decoder, "chat_template": GEMMA3_TEMPLATE,
        "processor_class": "Gemma3Processor",
        "extra_special_tokens": {"image_token": "<image_soft_token>",
                                 "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
    })
    _write_json(out / "special_tokens_map.json", {"bos_token": "<bos>",
                                                  "eos_token": "<end_of_turn>",
                                                  "pad_token": "<pad>"})
    _write_json(out / "generation_config.json", {"eos_token_id": config["eos_token_id"]})
    _write_json(out / "preprocessor_config.json", {
        "image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
        "size": {"height": 28, "width": 28}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "do_pan_and_scan": False, "resample": 2,
    })
    _write_json(out / "processor_config.json", {"image_seq_length": 4,
                                                "processor_class": "Gemma3Processor"})
    _save_gemma3_weights(out, config, seed)
    return out


def _save_gemma3_weights(out: pathlib.Path, config: dict, seed: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models.gemma3 import Model as Gemma3
    from mlx_vlm.models.gemma3 import ModelConfig, TextConfig, VisionConfig

    mx.random.seed(seed)
    model_config = ModelConfig.from_dict(dict(config))
    model_config.text_config = TextConfig.from_dict(config["text_config"])
    model_config.vision_config = VisionConfig.from_dict(config["vision_config"])
    model = Gemma3(model_config)
    weights = dict(tree_flatten(model.parameters()))
    projector = "multi_modal_projector.mm_input_projection_weight"
    if projector in weights:  # mx.ones at init: every image would project alike
        weights[projector] = mx.random.normal(weights[projector].shape) * 0.2
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
