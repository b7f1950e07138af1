"""The sampler draws from Ollama's distribution: top-k, temperature, softmax, top-p, min-p.

The expected distribution is computed exactly by a NumPy transcription of Ollama's
sample/samplers.go; the sampler is called once on a batch of identical rows (as a batch of
sequences sharing settings is sampled) and the frequencies are compared with it."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from bridge.engine.prepare import sampler_for  # noqa: E402
from bridge.engine.sampling import make_sampler  # noqa: E402
from bridge.wire.options import Options  # noqa: E402

LOGITS = np.array([2.0, 1.6, 1.5, 1.1, 0.7, 0.3, 0.0, -0.4, -1.0, -2.5, -3.0, -6.0],
                  dtype=np.float32)
DRAWS = 60_000


def ollama_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                        min_p: float) -> np.ndarray:
    """The probability of each token under Ollama's sampler (samplers.go / transforms.go)."""
    order = np.argsort(-logits, kind="stable")
    if 0 < top_k < len(logits):
        order = order[:top_k]
    scaled = (logits[order] - logits[order].max()) / max(temperature, 1e-7)
    probs = np.exp(scaled) / np.exp(scaled).sum()
    keep = len(probs)
    if top_p < 1.0:  # cut after the first token whose cumulative sum passes p
        over = np.nonzero(np.cumsum(probs) > top_p)[0]
        keep = over[0] + 1 if len(over) else keep
    kept = order[:keep]
    kept_probs = probs[:keep]
    if 0 < min_p < 1.0:
        mask = kept_probs >= kept_probs.max() * min_p
        kept, kept_probs = kept[mask], kept_probs[mask]
    out = np.zeros(len(logits))
    out[kept] = kept_probs / kept_probs.sum()
    return out


def frequencies(sampler, logits: np.ndarray, draws: int = DRAWS) -> np.ndarray:
    logprobs = mx.array(logits) - mx.logsumexp(mx.array(logits))
    tokens = np.array(sampler(mx.broadcast_to(logprobs, (draws, len(logits)))))
    assert tokens.shape == (draws,)
    return np.bincount(tokens, minlength=len(logits)) / draws


SETTINGS = [
    (0.8, 40, 0.9, 0.0),  # Ollama's defaults (top_k above this vocabulary: no cut)
    (0.8, 5, 0.9, 0.0),  # a top-k cut, then top-p on the tempered top 5
    (1.0, 0, 1.0, 0.0),  # plain softmax
    (1.5, 0, 0.7, 0.0),  # top-p over the whole vocabulary, hot
    (0.7, 6, 1.0, 0.3),  # min-p after a top-k cut
    (1.2, 0, 0.95, 0.1),  # top-p and min-p together
    (0.8, 4, 0.0, 0.0),  # top_p 0: the most likely token only (Ollama keeps the first)
]


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", SETTINGS)
def test_draws_follow_ollamas_distribution(temperature, top_k, top_p, min_p):
    mx.random.seed(1234)
    expected = ollama_distribution(LOGITS, temperature, top_k, top_p, min_p)
    seen = frequencies(make_sampler(temperature, top_k, top_p, min_p), LOGITS)
    assert np.all(seen[expected == 0] == 0), "a token outside Ollama's kept set was drawn"
    # 60k draws: the standard error of a frequency is at most 0.002
    assert np.abs(seen - expected).max() < 0.01, (seen.round(3), expected.round(3))


def test_order_differs_from_top_p_before_temperature():
    """The set top-p keeps depends on the order: Ollama tempers first. At temperature 2 the
    tempered distribution is flatter, so top-p 0.6 keeps more tokens than it would untempered
    (mlx-lm's order); the sampler keeps Ollama's set."""
    expected = ollama_distribution(LOGITS, 2.0, 0, 0.6, 0.0)
    untempered_first = np.cumsum(np.sort(np.exp(LOGITS) / np.exp(LOGITS).sum())[::-1])
    assert (expected > 0).sum() > np.argmax(untempered_first > 0.6) + 1
    mx.random.seed(7)
    seen = frequencies(make_sampler(2.0, 0, 0.6, 0.0), LOGITS)
    assert np.array_equal(seen > 0, expected > 0)


def test_greedy_and_shapes():
    greedy = make_sampler(0.0, 40, 0.9, 0.0)
    logprobs = mx.array(np.stack([LOGITS, LOGITS[::-1]]))
    assert np.array(greedy(logprobs)).tolist() == [0, len(LOGITS) - 1]
    sampled = make_sampler(0.8, 3, 0.9, 0.0)
    assert sampled(logprobs).shape == (2,)
    assert sampled(mx.array(LOGITS)).shape == ()  # one unbatched row
    assert int(sampled(mx.array(LOGITS))) in {0, 1, 2}


def test_grammar_masked_tokens_are_never_drawn():
    """Structured output masks tokens to -inf before sampling; with fewer allowed tokens than
    top_k the cut still holds only allowed ones with any probability."""
    masked = LOGITS.copy()
    masked[[0, 1, 3, 4, 5, 6, 7, 8, 9, 10]] = -np.inf
    mx.random.seed(3)
    seen = frequencies(make_sampler(0.8, 40, 0.9, 0.0), masked, draws=5_000)
    assert set(np.nonzero(seen)[0]) <= {2, 11}


class _Loaded:
    def __init__(self, vocab: int) -> None:
        self.tokenizer = [0] * vocab
        self.model = None  # no model args: the tokenizer's width
        self.samplers: dict = {}


def test_sampler_for_maps_ollama_options_and_shares_equal_settings():
    loaded = _Loaded(12)
    first = sampler_for(loaded, Options())
    assert sampler_for(loaded, Options()) is first  # one object: one batched call
    assert list(loaded.samplers) == [(0.8, 0, 0.9, 0.0)]  # top_k 40 >= vocab: no cut
    sampler_for(loaded, Options(top_k=5, top_p=1.0, min_p=1.0, temperature=1.0))
    assert (1.0, 5, 1.0, 1.0) in loaded.samplers  # min_p 1: the most likely only, as Ollama


def test_min_p_one_keeps_only_the_most_likely():
    """Ollama's Go sampler clamps min_p to 1 and keeps tokens >= max * 1 (llama.cpp and its MLX
    runner agree): at min_p 1 a draw is the most likely token."""
    mx.random.seed(11)
    assert set(np.nonzero(frequencies(make_sampler(1.0, 5, 1.0, 1.0), LOGITS, 2_000))[0]) == {0}


def _generate(url: str, options: dict) -> str:
    import requests

    body = {"model": "tiny", "prompt": "Once upon a time", "stream": False,
            "options": {"num_predict": 12, **options}}
    r = requests.post(url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["response"]


def test_a_cut_to_one_token_is_greedy_through_the_server(server):
    """Through a real server: at temperature 0.8, top_k 1 and top_p 0 (Ollama keeps only the
    most likely token) both answer exactly what greedy decoding answers; the defaults sample."""
    greedy = _generate(server, {"temperature": 0})
    assert _generate(server, {"temperature": 0.8, "top_k": 1}) == greedy
    assert _generate(server, {"temperature": 0.8, "top_p": 0}) == greedy
    sampled = {_generate(server, {"temperature": 1.5, "top_k": 0, "top_p": 1, "seed": s})
               for s in range(4)}
    assert len(sampled) > 1  # the draws are random, not greedy in disguise


def test_half_precision_log_probabilities():
    """Quantized and half-precision models hand float16/bfloat16 logits to the sampler."""
    mx.random.seed(5)
    expected = ollama_distribution(LOGITS, 0.8, 5, 0.9, 0.0)
    for dtype in (mx.float16, mx.bfloat16):
        logprobs = (mx.array(LOGITS) - mx.logsumexp(mx.array(LOGITS))).astype(dtype)
        tokens = np.array(make_sampler(0.8, 5, 0.9, 0.0)(
            mx.broadcast_to(logprobs, (20_000, len(LOGITS)))))
        seen = np.bincount(tokens, minlength=len(LOGITS)) / len(tokens)
        assert np.all(seen[expected == 0] == 0)
        assert np.abs(seen - expected).max() < 0.02
