"""OpenAI's `logit_bias` is honoured (it was accepted and ignored), also as a native option;
`n` other than 1 is a clear 400. One real server, the tiny model, greedy decoding."""

from __future__ import annotations

import pytest
import requests
from transformers import AutoTokenizer


def _chat(url: str, **extra) -> requests.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Say something."}],
            "temperature": 0, "max_tokens": 6, "logprobs": True, **extra}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=120)


def _generated_ids(url: str, options: dict) -> list[int]:
    """Greedy token ids of an /api/generate answer (its `context` ends with them)."""
    body = {"model": "tiny", "prompt": "Once upon a time", "stream": False,
            "options": {"temperature": 0, "num_predict": 6, **options}}
    r = requests.post(url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["context"][len(out["context"]) - out["eval_count"]:]


def test_a_strong_bias_forces_a_token(server, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    forced = tok.encode("hello", add_special_tokens=False)[0]
    r = _chat(server, logit_bias={str(forced): 100})
    assert r.status_code == 200, r.text
    tokens = [t["token"] for t in r.json()["choices"][0]["logprobs"]["content"]]
    assert tokens == [tok.decode([forced])] * 6


def test_a_negative_bias_bans_the_greedy_token_natively(server):
    plain = _generated_ids(server, {})
    banned = _generated_ids(server, {"logit_bias": {str(plain[0]): -100}})
    assert banned[0] != plain[0]
    assert plain[0] not in banned


@pytest.mark.parametrize("bias,words", [
    ({"99999": 5}, "outside the vocabulary"),
    ({"7": 150}, "between -100 and 100"),
    ({"seven": 1}, "not a token id"),
    (["7"], "must be an object"),
    ([], "must be an object"),
    ({"\u00b2": 3}, "not a token id"),  # a Unicode digit: isdigit() says yes, int() says no
    ({"\u0661\u0662": 3}, "not a token id"),  # Arabic-Indic digits: not an id either
])
def test_bad_logit_bias_is_a_400(server, bias, words):
    r = _chat(server, logit_bias=bias)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_n_other_than_one_is_a_400(server):
    assert _chat(server, n=1).status_code == 200
    r = _chat(server, n=2)
    assert r.status_code == 400
    assert "one choice per request" in r.json()["error"]["message"]
    r = requests.post(server + "/v1/completions", json={"model": "tiny", "prompt": "Hi",
                                                        "max_tokens": 2, "n": 3}, timeout=60)
    assert r.status_code == 400


def _byte_token(tiny_model_dir, byte: int) -> int:
    """The id of the ByteLevel token standing for one raw byte."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tok.convert_tokens_to_ids(_bytes_to_unicode()[byte])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ByteLevel tokens are written in)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions"])
def test_a_character_cut_off_by_the_limit_is_dropped_not_replaced(server, tiny_model_dir, path):
    """The answer's last token is the first byte of a 4-byte character (forced by logit_bias):
    its text is dropped, as Ollama's runner drops incomplete bytes at the end, not a U+FFFD."""
    lead = _byte_token(tiny_model_dir, 0xF0)
    if path == "/api/generate":
        body = {"model": "tiny", "prompt": "Once", "stream": False, "raw": True,
                "options": {"temperature": 0, "num_predict": 1, "logit_bias": {str(lead): 100}}}
        r = requests.post(server + path, json=body, timeout=120)
        text, count = r.json()["response"], r.json()["eval_count"]
    else:
        body = {"model": "tiny", "prompt": "Once", "max_tokens": 1, "temperature": 0,
                "logit_bias": {str(lead): 100}}
        r = requests.post(server + path, json=body, timeout=120)
        text, count = r.json()["choices"][0]["text"], r.json()["usage"]["completion_tokens"]
    assert r.status_code == 200, r.text
    assert count == 1
    assert text == ""
