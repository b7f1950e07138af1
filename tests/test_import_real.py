"""Real GGUFs from the package index, imported once per session: SmolLM2-135M-Instruct (llama, Q4_1)
and Gemma 3 270M (gemma3, Q4_K_M: Q4_K/Q5_0/Q6_K/Q8_0). Each import is checked against the numpy
reference forward in tests/reference_forward.py (llama.cpp's layout, no shared code), and against
outputs seen with llama.cpp on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from bridge.modelinfo.describe import describe_model

from .reference_forward import ReferenceModel, compare

# gemma_gguf and imported (session fixtures) live in conftest.py (smollm2_dir reuses the import)

TEXT = ("The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin "
        "is "
        "the capital of Germany. In 2024, 17 new libraries opened; each one holds 3,500 books!")
# Agreement bounds over every position of TEXT (about 50 tokens). Measured: top-1 100% for both;
# mean KL 4e-11 (SmolLM2, float32 end to end) and 5e-6 (Gemma: mlx-lm rounds the embedding scale
# sqrt(640) to bfloat16, the reference does not).
MIN_TOP1 = 1.0
MAX_MEAN_KL = 1e-4
MAX_KL = 1e-3
GEMMA_PROMPT = "The capital of France is"
GEMMA_LLAMA_CPP = " the capital of the country of France. It is the largest"  # llama.cpp, greedy


@pytest.fixture(scope="module")
def loaded():
    """mlx_lm.load once per imported model for this module (Gemma's 262k-token tokenizer.json
    alone takes seconds to parse); the tests only read from the model."""
    from mlx_lm import load

    cache: dict[Path, tuple] = {}

    def get(model_dir: Path) -> tuple:
        if model_dir not in cache:
            cache[model_dir] = load(str(model_dir))
        return cache[model_dir]

    return get


def _agreement(gguf: Path, model_dir: Path, loaded) -> tuple[float, float, float]:
    import mlx.core as mx

    model, tokenizer = loaded(model_dir)
    ids = tokenizer.encode(TEXT)
    logits = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    return compare(ReferenceModel(str(gguf)).logits(ids), logits)


@pytest.mark.slow
def test_smollm2_agrees_with_the_reference(smollm2_gguf, imported, loaded):
    top1, kl_mean, kl_max = _agreement(smollm2_gguf, imported(smollm2_gguf, "smollm2:135m"),
                                       loaded)
    print(f"smollm2 top1={top1:.3f} kl_mean={kl_mean:.2e} kl_max={kl_max:.2e}")
    assert top1 >= MIN_TOP1 and kl_mean <= MAX_MEAN_KL and kl_max <= MAX_KL


@pytest.mark.slow
def test_gemma3_agrees_with_the_reference(gemma_gguf, imported, loaded):
    top1, kl_mean, kl_max = _agreement(gemma_gguf, imported(gemma_gguf, "gemma3:270m"), loaded)
    print(f"gemma3 top1={top1:.3f} kl_mean={kl_mean:.2e} kl_max={kl_max:.2e}")
    assert top1 >= MIN_TOP1 and kl_mean <= MAX_MEAN_KL and kl_max <= MAX_KL


def test_gemma3_greedy_completion_matches_llama_cpp_token_for_token(gemma_gguf, imported, loaded):
    from mlx_lm import generate

    model, tokenizer = loaded(imported(gemma_gguf, "gemma3:270m"))
    expected = tokenizer.encode(GEMMA_LLAMA_CPP, add_special_tokens=False)
    text = generate(model, tokenizer, GEMMA_PROMPT, max_tokens=len(expected))
    assert tokenizer.encode(text, add_special_tokens=False) == expected
    assert text == GEMMA_LLAMA_CPP


CITY = {"type": "object", "additionalProperties": False,
        "required": ["city", "country", "population_millions"],
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "country": {"enum": ["France", "Germany", "Italy"]},
                       "population_millions": {"type": "integer", "minimum": 0, "maximum": 50}}}


@pytest.mark.slow
def test_gemma3_json_schema_output_validates(gemma_gguf, imported, loaded):
    """Structured output over a 262k-token vocabulary (SentencePiece pieces, byte fallback): the
    bridge's grammar, llguidance tables and logits processor on Gemma's tokenizer, greedy through
    mlx-lm. The engine runs the same processor; tests/test_structured_demo.py takes the whole
    server path on SmolLM2 (a server here would load Gemma's tokenizer twice more: 12 s)."""
    from mlx_lm import generate

    from bridge.engine.structured import TokenizerTables
    from bridge.serving.output import plan_output

    model, tokenizer = loaded(imported(gemma_gguf, "gemma3:270m"))
    processor = plan_output(None, [], None, CITY).factory(TokenizerTables())(tokenizer)
    question = ("What is the capital of France? Answer in JSON with its city, country and "
                "population in millions.")  # short: this process's MLX runs on its bundled BLAS
    # Gemma 3's turn format (the import's template is Ollama's Go template, rendered by the
    # server; mlx-lm adds the <bos>)
    prompt = f"<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"
    text = generate(model, tokenizer, prompt, max_tokens=60, logits_processors=[processor])
    print("gemma3:270m ->", text)
    value = json.loads(text)
    jsonschema.validate(value, CITY)
    assert processor.constraint.matcher.is_accepting()  # the value ended: EOS came next


def test_smollm2_answers_paris_with_its_chat_template(smollm2_gguf, imported, loaded):
    from mlx_lm import generate

    model, tokenizer = loaded(imported(smollm2_gguf, "smollm2:135m"))
    prompt = tokenizer.apply_chat_template([{"role": "user",
                                             "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert generate(model, tokenizer, prompt, max_tokens=20) == "The capital of France is Paris."


def test_real_imports_are_described_for_tags(gemma_gguf, smollm2_gguf, imported):
    gemma = describe_model(imported(gemma_gguf, "gemma3:270m"))
    assert gemma.details["family"] == "gemma3" and gemma.details["quantization_level"] == "F32"
    assert gemma.details["parameter_size"] == "268.10M" and gemma.context_length == 32768
    smol = describe_model(imported(smollm2_gguf, "smollm2:135m"))
    assert smol.details["family"] == "llama" and smol.details["parameter_size"] == "134.52M"
    assert "completion" in smol.capabilities and "<|im_start|>" in smol.template
    cfg = json.loads((imported(gemma_gguf, "gemma3:270m") / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["query_pre_attn_scalar"] == 256
