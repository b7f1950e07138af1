"""A growing chat carries the token ids the model generated (issue 17): the next turn's prompt
reuses them instead of re-tokenizing the answer's text, so it hits the prompt (KV) cache for
the whole history and prefills only the new turn."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ollama
import pytest

from bridge.serving.prompting import Transcripts

from .conftest import start_server, stop_server, write_mappings
from .helpers import tiny_app

QUESTIONS = ["Why is the sky blue?", "And the sea?", "Name three colours.", "What is 12 times 12?"]
GREEDY = {"temperature": 0, "num_predict": 12}


def tokenizer_for(path: Path):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(path)


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
    with caplog.at_level(logging.INFO, logger="bridge.engine.prepare"):
        for i, question in enumerate(QUESTIONS):
            before = list(messages)
            messages.append({"role": "user", "content": question})
            caplog.clear()
            reply = client.post("/api/chat", json={"model": "tiny", "messages": messages,
                                                   "stream": False, "options": GREEDY}).get_json()
            line = next(r.getMessage() for r in caplog.records
                        if r.getMessage().startswith("prompt request_id")
                        and "warm-up" not in r.getMessage())
            prompt, cached = map(int, re.findall(r"(?:prompt|cached)_tokens=(\d+)", line))
            assert prompt == reply["prompt_eval_count"]
            if i:
                # Only the new turn runs (+1: a length-ended answer's last token was never fed).
                assert prompt - cached <= new_turn_tokens(tok, before, messages) + 1, line
            messages.append({"role": "assistant", "content": reply["message"]["content"]})


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
    client = ollama.Client(host=server)
    messages: list[dict] = []
    last = None
    for question in QUESTIONS[:3]:
        before = list(messages)
        messages.append({"role": "user", "content": question})
        reply = client.chat(model="tiny", messages=messages, options=GREEDY)
        if last is not None:
            expected = (last.prompt_eval_count + last.eval_count
                        + new_turn_tokens(tok, before, messages))
            assert reply.prompt_eval_count == expected
        messages.append({"role": "assistant", "content": reply.message.content})
        last = reply
