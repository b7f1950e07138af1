"""Tests for the tiny real model builder in ``bridge.testing``."""

from __future__ import annotations

import json

import pytest

from bridge.testing import build_tiny_model

mlx_lm = pytest.importorskip("mlx_lm")
sample_utils = pytest.importorskip("mlx_lm.sample_utils")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Build the default tiny model once per module."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    """Load the tiny model and tokenizer with mlx_lm."""
    return mlx_lm.load(str(tiny_dir))


def _greedy(model, tokenizer, prompt, max_tokens: int = 30) -> list[int]:
    """Return the greedy-decoded token ids for ``prompt``."""
    sampler = sample_utils.make_sampler(temp=0.0)
    return [
        r.token
        for r in mlx_lm.stream_generate(
            model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler
        )
    ]


def test_writes_expected_files(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    } <= names
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True


def test_special_tokens_and_eos(loaded):
    _, tok = loaded
    assert [
        tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    ] == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>"
    assert 2 in tok.eos_token_ids


def test_chat_template_renders_chatml(loaded):
    _, tok = loaded
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_renders_roles_and_tools(loaded):
    _, tok = loaded
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "calling"},
        {"role": "tool", "content": "sunny"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    text = tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=False, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nYou can call these tools:\n{")
    assert '"get_weather"' in text
    for m in messages:
        assert f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" in text
    assert not text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("text", ["hello world", " leading space", "café ☕ 日本", "a\nb\tc"])
def test_encode_decode_round_trip(loaded, text):
    _, tok = loaded
    assert tok.decode(tok.encode(text)) == text


def test_greedy_is_deterministic_and_varied(loaded):
    model, tok = loaded
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    first = _greedy(model, tok, prompt)
    assert first == _greedy(model, tok, prompt)
    assert len(first) == 30
    assert len(set(first)) >= 4


def test_same_seed_same_weights(tmp_path, tiny_dir):
    other = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes()


def test_different_seed_different_weights(tmp_path, tiny_dir):
    other = build_tiny_model(tmp_path / "seed1", seed=1)
    assert (other / "model.safetensors").read_bytes() != (
        tiny_dir / "model.safetensors"
    ).read_bytes()


def test_empty_chat_template_means_base_model(tmp_path):
    path = build_tiny_model(tmp_path / "base", chat_template="")
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert "chat_template" not in config
    _, tok = mlx_lm.load(str(path))
    assert not tok.has_chat_template


def test_custom_chat_template_is_used(tmp_path):
    template = "{%- for m in messages %}[{{ m['content'] }}]{%- endfor %}"
    _, tok = mlx_lm.load(str(build_tiny_model(tmp_path / "custom", chat_template=template)))
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "[x]"


def test_rejects_too_small_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model(tmp_path / "small", vocab_size=100)
