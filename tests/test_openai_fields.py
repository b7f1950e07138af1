"""Every field of an OpenAI-protocol request to the bridge's own models is honoured or refused
with a 400 naming it (it was accepted and ignored): audio output, legacy `functions`, web
search, `echo`, `best_of`, unknown names. Fields that ask nothing of the output are accepted at
their neutral values; `top_k`, `min_p` and `repeat_penalty` are honoured. One real server, the
tiny model."""

from __future__ import annotations

import pytest
import requests

ASK = [{"role": "user", "content": "Tell me a story."}]


def _chat(url: str, **extra) -> requests.Response:
    body = {"model": "tiny", "messages": ASK, "max_tokens": 8, **extra}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=120)


def _refused(r: requests.Response, field: str) -> None:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{field}: not supported"), error


@pytest.mark.parametrize("field,value", [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("functions", [{"name": "f", "parameters": {"type": "object", "properties": {}}}]),
    ("function_call", "auto"),
    ("web_search_options", {}),
    ("verbosity", "low"),
    ("store", True),
    ("service_tier", "flex"),
    ("foo_bar", 1),
])
def test_a_chat_field_the_bridge_cannot_honour_is_refused(server, field, value):
    _refused(_chat(server, **{field: value}), field)


def test_fields_that_ask_nothing_of_the_output_are_accepted(server):
    plain = _chat(server, temperature=0)
    r = _chat(server, temperature=0, user="u1", safety_identifier="s", prompt_cache_key="k",
              store=False, service_tier="auto", modalities=["text"], metadata={"a": "b"},
              prediction={"type": "content", "content": "Once upon a time"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]


def test_top_k_one_is_greedy_whatever_the_seed(server):
    greedy = _chat(server, temperature=0, max_tokens=16).json()["choices"][0]["message"]
    for seed in (1, 2, 3):
        r = _chat(server, temperature=1.5, top_k=1, seed=seed, max_tokens=16)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"] == greedy
    sampled = [_chat(server, temperature=1.5, seed=seed, max_tokens=16).json()["choices"][0]
               for seed in (1, 2, 3)]
    assert any(c["message"] != greedy for c in sampled)  # without top_k these seeds differ


def test_min_p_and_repeat_penalty_reach_the_sampler(server):
    """min_p 1.0 keeps only the most likely token (greedy); a strong repeat penalty changes a
    greedy answer of the tiny model, which repeats itself."""
    greedy = _chat(server, temperature=0, max_tokens=24).json()["choices"][0]["message"]
    r = _chat(server, temperature=1.5, min_p=1.0, seed=7, max_tokens=24)
    assert r.json()["choices"][0]["message"] == greedy
    sampled = _chat(server, temperature=1.5, seed=7, max_tokens=24)
    assert sampled.json()["choices"][0]["message"] != greedy  # without min_p it differs
    penalised = _chat(server, temperature=0, repeat_penalty=5.0, max_tokens=24)
    assert penalised.status_code == 200, penalised.text
    assert penalised.json()["choices"][0]["message"] != greedy


@pytest.mark.parametrize("field,value", [("echo", True), ("best_of", 2), ("foo", "x")])
def test_a_completion_field_the_bridge_cannot_honour_is_refused(server, field, value):
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 4, field: value}
    _refused(requests.post(server + "/v1/completions", json=body, timeout=120), field)


def test_neutral_completion_fields_are_accepted(server):
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 4, "echo": False, "best_of": 1,
            "user": "u"}
    r = requests.post(server + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field,value", [("top_k", 1), ("seed", 1), ("frequency_penalty", 2),
                                         ("foo", 1)])
def test_a_responses_field_it_does_not_know_is_refused(server, field, value):
    body = {"model": "tiny", "input": "Hi", "max_output_tokens": 4, field: value}
    _refused(requests.post(server + "/v1/responses", json=body, timeout=120), field)


def test_responses_accepts_its_own_neutral_fields(server):
    body = {"model": "tiny", "input": "Hi", "max_output_tokens": 4, "store": False,
            "prompt_cache_retention": "24h", "user": "u", "metadata": {"a": "b"}}
    r = requests.post(server + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text


def test_a_format_that_is_not_an_object_says_what_it_got(server):
    r = _chat(server, response_format="json")
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith('invalid response_format: "json"')
    body = {"model": "tiny", "input": "Hi", "text": {"format": 5}}
    r = requests.post(server + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 400 and "invalid text.format: 5" in r.json()["error"]["message"]
