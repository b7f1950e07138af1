"""A growing chat carries the token ids the model generated (issue 17): the next turn's prompt
reuses them instead of re-tokenizing the answer's text, so it hits the prompt (KV) cache for
the whole history and prefills only the new turn."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import requests

from bridge.serving.prompting import Transcripts

from .conftest import start_server, stop_server, write_mappings
from .helpers import tiny_app

QUESTIONS = ["Why is the sky blue?", "And the sea?", "Name three colours.", "What is 12 times 12?"]
GREEDY = {"temperature": 0, "num_predict": 12}


def tokenizer_for(path: Path):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(path)


def text_of(pieces: list[dict]) -> str:
    return b"".join(bytes(e["bytes"]) for e in pieces).decode("utf-8", errors="replace")


def ends_cut(reply: dict) -> bool:
    """The answer's last tokens made no whole character (their bytes, in its logprobs, end in
    an incomplete or invalid UTF-8 sequence): dropped from the text (as Ollama drops them), so
    the next turn cannot carry them."""
    return text_of(reply["logprobs"]).endswith("\ufffd")


def whole_ids(reply: dict) -> int:
    """How many of the answer's ids the next turn carries: those up to its last whole
    character (all of them unless it ends cut)."""
    pieces = reply["logprobs"]
    n = len(pieces)
    while n and text_of(pieces[:n]).endswith("\ufffd"):
        n -= 1
    return n


def new_turn_tokens(tok, before: list[dict], after: list[dict]) -> int:
    """Tokens of what `after`'s rendering adds to `before`'s (the answer already inside)."""
    old = tok.apply_chat_template(before, tokenize=False, continue_final_message=True)
    new = tok.apply_chat_template(after, tokenize=False, add_generation_prompt=True)
    assert new.startswith(old)
    return len(tok.encode(new[len(old):], add_special_tokens=False))


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    yield from tiny_app(tiny_model_dir, tmp_path_factory.mktemp("turn-home"))


def test_each_turn_prefills_only_its_own_tokens(app, tiny_model_dir, caplog):
    tok = tokenizer_for(tiny_model_dir)
    client = app.test_client()
    messages: list[dict] = []
    cut = False
    with caplog.at_level(logging.INFO, logger="bridge.engine.prepare"):
        for i, question in enumerate(QUESTIONS):
            before = list(messages)
            messages.append({"role": "user", "content": question})
            caplog.clear()
            reply = client.post("/api/chat", json={"model": "tiny", "messages": messages,
                                                   "stream": False, "options": GREEDY,
                                                   "logprobs": True}).get_json()
            line = next(r.getMessage() for r in caplog.records
                        if r.getMessage().startswith("prompt request_id")
                        and "warm-up" not in r.getMessage())
            prompt, cached = map(int, re.findall(r"(?:prompt|cached)_tokens=(\d+)", line))
            assert prompt == reply["prompt_eval_count"]
            if i:
                # Only the new turn runs (+1: a length-ended answer's last token was never fed;
                # an answer cut inside a character also re-runs the few tokens it lost).
                slack = 8 if cut else 1
                assert prompt - cached <= new_turn_tokens(tok, before, messages) + slack, line
            messages.append({"role": "assistant", "content": reply["message"]["content"]})
            cut = ends_cut(reply)


def test_a_stop_string_answer_is_not_remembered_as_its_ids(app):
    """The text a stop string cut is shorter than the ids generated: not a transcript."""
    client = app.test_client()
    messages = [{"role": "user", "content": "Stop early please."}]
    ask = {"model": "tiny", "messages": messages, "stream": False, "options": GREEDY}
    full = client.post("/api/chat", json=ask).get_json()["message"]["content"]
    store = next(iter(app.extensions["bridge"].local.tokenizers._slots.values())).transcripts
    kept = dict(store._texts)
    assert any(t.endswith(full) for t in kept)  # a whole answer is remembered
    stop = full[len(full) // 2:][:2]
    cut = client.post("/api/chat", json={**ask, "options": {**GREEDY, "stop": [stop]}}).get_json()
    assert cut["done_reason"] == "stop" and len(cut["message"]["content"]) < len(full)
    assert store._texts == kept


def test_an_answer_whose_last_bytes_were_dropped_is_not_remembered_as_its_ids(app):
    """The tiny model's first greedy token for "hi" is part of a character: the answer's text is
    "" but its ids are one more, so the same request again must not inherit that id (it did:
    prompt_eval_count 14, 15, 16 and a different greedy answer)."""
    client = app.test_client()
    ask = {"model": "tiny", "stream": False, "options": {"num_predict": 1, "temperature": 0},
           "messages": [{"role": "user", "content": "hi"}]}
    answers = [client.post("/api/chat", json=ask).get_json() for _ in range(3)]
    assert answers[0]["message"]["content"] == "" and answers[0]["eval_count"] == 1
    assert {a["prompt_eval_count"] for a in answers} == {answers[0]["prompt_eval_count"]}
    assert {a["message"]["content"] for a in answers} == {""}


def test_a_cut_character_is_left_out_of_the_remembered_turn(tiny_model_dir):
    """An answer that ended two bytes into "日" (3 byte tokens in the tiny vocabulary) streamed
    "ab": the turn is remembered as "ab" and the ids up to the "b"."""
    from bridge.serving.prompting import _whole_characters

    tok = tokenizer_for(tiny_model_dir)
    prompt = tok.encode("Say it:", add_special_tokens=False)
    answer = tok.encode("ab日", add_special_tokens=False)[:-1]  # the last byte never came
    assert [tok.decode([i]) for i in answer][-2:] == ["\ufffd", "\ufffd"]
    kept = _whole_characters(tok, "Say it:ab", prompt + answer, len(answer))
    assert kept == ("Say it:ab", prompt + answer[:2])


def test_transcripts_keep_the_longest_prefix_and_stay_bounded(tiny_model_dir):
    tok = tokenizer_for(tiny_model_dir)
    store = Transcripts(max_entries=2)
    store.add("hello", [7])
    store.add("hello world", [7, 8, 9])
    got = store.tokens(tok, "hello world again")
    assert got[:3] == [7, 8, 9]
    assert got[3:] == list(tok.encode(" again", add_special_tokens=False))
    assert store.tokens(tok, "bye") == list(tok.encode("bye"))  # no prefix: plain tokenizing
    store.add("third", [1])
    assert store.tokens(tok, "hello there")[:1] != [7]  # the oldest entry went


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("turn-server")
    maps = write_mappings(home / "maps.yaml", {"tiny": {"mlx": str(tiny_model_dir),
                                                         "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(maps), "--home", str(home), "--upstream", "none"])
    yield url
    stop_server(proc)


def test_a_real_server_carries_the_generated_ids_into_the_next_turn(server, tiny_model_dir):
    """prompt_eval_count of turn N = turn N-1's prompt + its answer's ids + the new turn: the
    answer counts as the ids generated, not as its (longer) re-tokenized text."""
    tok = tokenizer_for(tiny_model_dir)
    messages: list[dict] = []
    last = None
    carried = 0
    for question in QUESTIONS:
        before = list(messages)
        messages.append({"role": "user", "content": question})
        reply = requests.post(server + "/api/chat", timeout=60, json={
            "model": "tiny", "messages": messages, "options": GREEDY, "stream": False,
            "logprobs": True}).json()
        if last is not None:
            kept = whole_ids(last)  # an answer cut inside a character: its whole part
            expected = last["prompt_eval_count"] + kept + new_turn_tokens(tok, before, messages)
            if text_of(last["logprobs"][:kept]) == last["message"]["content"]:
                assert reply["prompt_eval_count"] == expected, (kept, last["eval_count"])
                carried += 1
            else:  # the text after the kept ids is tokenized anew
                assert abs(reply["prompt_eval_count"] - expected) <= 8
        messages.append({"role": "assistant", "content": reply["message"]["content"]})
        last = reply
    assert carried  # at least one turn's count was checked exactly
