"""GGUF import on small GGUFs written here: dequantization per type, name maps per architecture,
tokenizers, failure modes. Each GGUF is written the way llama.cpp's converter writes one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from bridge.importer import ImportFailed, convert_gguf, import_model
from bridge.testing import build_tiny_model

from .gguf_fixtures import bpe_tokenizer_meta, random_weights, spm_tokenizer_meta, write_gguf
from .reference_forward import ReferenceModel, compare

CFG = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-6,
       "rope_theta": 10000.0, "max_position_embeddings": 1024}
# Relative RMS error of a dequantized 2-D tensor against the float original, per ggml type:
# about 1.5x what each format's step size gives on Gaussian weights.
TOLERANCE = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.06,
             "Q5_0": 0.065, "Q5_1": 0.06, "Q4_K": 0.12, "Q4_1": 0.12, "Q4_0": 0.13}
TEXT = "The quick brown fox jumps over the lazy dog. Hello world, hello friend!"


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    """A trained ByteLevel BPE tokenizer.json (the tiny test model's)."""
    return build_tiny_model(tmp_path_factory.mktemp("tok") / "m") / "tokenizer.json"


def _cfg(arch: str, tok: dict) -> dict:
    # mlx-lm's gemma3 needs a full 6-layer sliding/global pattern
    extra = {"sliding_window": 512, "num_hidden_layers": 6} if arch == "gemma3" else {}
    return {**CFG, "vocab_size": len(tok["tokens"]), **extra}


def _convert(tmp: Path, arch: str, tok: dict, qtype: str = "F32", template: str | None = None):
    cfg = _cfg(arch, tok)
    weights = random_weights(arch, cfg)
    gguf_path = write_gguf(tmp / f"{arch}-{qtype}.gguf", arch, cfg, weights, tok, qtype, template)
    out = tmp / f"out-{arch}-{qtype}"
    out.mkdir()
    config = convert_gguf(gguf_path, out)
    return gguf_path, out, config, weights


def _rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


@pytest.mark.parametrize("qtype", sorted(TOLERANCE))
def test_dequantized_weights_match_the_originals(tmp_path, tiny_tokenizer, qtype):
    _, out, _, weights = _convert(tmp_path, "llama", bpe_tokenizer_meta(tiny_tokenizer), qtype)
    imported = load_file(str(out / "model.safetensors"))
    assert set(imported) == set(weights)
    for name, original in weights.items():
        got = imported[name]
        assert got.shape == original.shape and got.dtype == np.float32, name
        if original.ndim == 1:  # norms stay F32: exact
            np.testing.assert_array_equal(got, original, err_msg=name)
        else:  # q/k included: a missed un-permutation gives an error near 1.4
            assert _rel_rms(got, original) <= TOLERANCE[qtype], (name, _rel_rms(got, original))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_each_architecture_maps_exactly_and_agrees_with_the_reference(tmp_path, tiny_tokenizer,
                                                                      arch):
    tok = spm_tokenizer_meta() if arch == "gemma3" else bpe_tokenizer_meta(tiny_tokenizer)
    gguf_path, out, config, weights = _convert(tmp_path, arch, tok)
    imported = load_file(str(out / "model.safetensors"))
    assert set(imported) == set(weights)
    for name, original in weights.items():  # F32: the transforms must be undone exactly
        np.testing.assert_allclose(imported[name], original, rtol=0, atol=1e-6, err_msg=name)
    model_type = {"gemma3": "gemma3_text"}.get(arch, arch)
    assert config["model_type"] == model_type and config["head_dim"] == 64
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True

    import mlx.core as mx
    from mlx_lm import load

    model, tokenizer = load(str(out))
    ids = tokenizer.encode("the cat sat at the cat" if arch == "gemma3" else TEXT)
    logits = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    top1, kl_mean, kl_max = compare(ReferenceModel(str(gguf_path)).logits(ids), logits)
    assert top1 == 1.0 and kl_mean < 1e-5 and kl_max < 1e-4, (top1, kl_mean, kl_max)


def test_bpe_tokenizer_is_rebuilt_identically(tmp_path, tiny_tokenizer):
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    _, out, _, _ = _convert(tmp_path, "llama", bpe_tokenizer_meta(tiny_tokenizer),
                            template=template)
    original = Tokenizer.from_file(str(tiny_tokenizer))
    rebuilt = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in (TEXT, "<|im_start|>user\nWhat is 2024?<|im_end|>",
                 "café naïve 日本 ☕  spaces\n\n"):
        assert rebuilt.encode(text).ids == original.encode(text).ids, text
        assert rebuilt.decode(rebuilt.encode(text).ids, skip_special_tokens=False) == text
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["chat_template"] == template
    assert (json.loads((out / "generation_config.json").read_text())["eos_token_id"]
            == original.token_to_id("<|im_end|>"))


def test_sentencepiece_tokenizer_merges_by_score_and_falls_back_to_bytes(tmp_path):
    _, out, _, _ = _convert(tmp_path, "gemma3", spm_tokenizer_meta())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    enc = tok.encode("the cat€")
    assert enc.tokens == ["<bos>", "t", "he", "\u2581cat", "<0xE2>", "<0x82>", "<0xAC>"]
    assert tok.decode(enc.ids, skip_special_tokens=True) == "the cat€"
    assert tok.encode("<start_of_turn>a").tokens == ["<bos>", "<start_of_turn>", "a"]


def test_unsupported_architecture_fails_early_naming_it(tmp_path, tiny_tokenizer):
    tok = bpe_tokenizer_meta(tiny_tokenizer)
    path = write_gguf(tmp_path / "phi.gguf", "phi3", _cfg("llama", tok),
                      random_weights("llama", _cfg("llama", tok)), tok)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImportFailed, match="unsupported architecture 'phi3'"):
        convert_gguf(path, out)
    assert list(out.iterdir()) == []


def test_unsupported_quantization_fails_early_naming_it(tmp_path, tiny_tokenizer):
    import gguf

    tok = bpe_tokenizer_meta(tiny_tokenizer)
    cfg = _cfg("llama", tok)
    path = write_gguf(tmp_path / "a.gguf", "llama", cfg, random_weights("llama", cfg), tok)
    w = gguf.GGUFWriter(str(tmp_path / "q2.gguf"), "llama")  # same metadata, one Q2_K tensor
    reader = gguf.GGUFReader(str(path))
    for f in reader.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            w.add_key_value(f.name, f.contents(), f.types[0],
                            f.types[-1] if len(f.types) > 1 else None)
    w.add_tensor("token_embd.weight", np.zeros((cfg["vocab_size"], 84), np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImportFailed, match="unsupported GGUF tensor type.*Q2_K"):
        convert_gguf(tmp_path / "q2.gguf", out)


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ImportFailed, match="not a GGUF file"):
        import_model(str(bad), tmp_path / "home")


def test_failed_import_leaves_nothing_registered(tmp_path, tiny_tokenizer):
    tok = bpe_tokenizer_meta(tiny_tokenizer)
    cfg = _cfg("llama", tok)
    path = write_gguf(tmp_path / "phi.gguf", "phi3", cfg, random_weights("llama", cfg), tok)
    home = tmp_path / "home"
    with pytest.raises(ImportFailed):
        import_model(str(path), home, name="broken")
    assert list((home / "models" / "imported").iterdir()) == []
    assert not (home / "local_models.yaml").exists()


@pytest.mark.parametrize("bits", ["8", "4"])
def test_quantize_option_writes_an_mlx_quantized_model(tmp_path, tiny_tokenizer, bits):
    tok = bpe_tokenizer_meta(tiny_tokenizer)
    cfg = _cfg("llama", tok)
    path = write_gguf(tmp_path / "m.gguf", "llama", cfg, random_weights("llama", cfg), tok, "Q8_0")
    result = import_model(str(path), tmp_path / "home", name="q", quantize=bits)
    config = json.loads((result.path / "config.json").read_text())
    assert (config["quantization"]["bits"] == int(bits)
            and config["quantization"]["group_size"] == 64)
    assert (result.path / "mlx_bridge_import.json").is_file()
    from mlx_lm import generate, load

    model, tokenizer = load(str(result.path))
    assert isinstance(generate(model, tokenizer, "Hello", max_tokens=3), str)
    leftovers = [p.name for p in result.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
