"""Prompt-lookup drafting (issue 17): a mapping's `draft: prompt-lookup` makes a lone stream
propose what followed the context's latest earlier n-gram match; the model checks it in one
pass. Greedy output is token-identical to plain decoding; batching stays on."""

from __future__ import annotations

import logging
import re
import threading
import time

import ollama
import pytest

from bridge.engine import Done, Engine, Job, PromptSpec
from bridge.engine.lookup import Counts, NgramIndex, PromptLookup, lookup_generate_step
from bridge.routing.registry import MappingError, parse_mappings
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings
from .helpers import finish

# The tiny random model copies this back (about 40% of its tokens come from the lookup).
REPEAT = "Repeat: the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."
ASK = "Write a story about a llama who learned to code."


def job(path, lookup, prompt=REPEAT, n=60, temperature=0.0) -> Job:
    return Job(str(path), "tiny", spec=PromptSpec(messages=[{"role": "user", "content": prompt}]),
               options=Options(temperature=temperature, num_predict=n), lookup=lookup)


def run(engine: Engine, j: Job) -> Done:
    engine.submit(j)
    return finish(j)


@pytest.fixture(scope="module")
def engine():
    eng = Engine(num_parallel=4, prompt_cache_bytes=0)
    eng.start()
    yield eng
    eng.stop()


def drafted(lines: list[str]) -> list[tuple[int, int, int]]:
    """(tokens, from_draft, proposed) of each `speculative … draft=prompt-lookup` line."""
    return [tuple(int(v) for v in re.findall(r"(?:tokens|from_draft|proposed)=(\d+)", line))
            for line in lines if "speculative " in line and "draft=prompt-lookup" in line]


def test_the_index_proposes_what_followed_the_latest_longest_match():
    index = NgramIndex([5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2], max_n=3)
    assert index.propose(3) == [4, 7, 1]  # "1 2" last came before "4 7 …" (not "3 9")
    index.extend([3])  # "1 2 3" now matches the longest: what followed it first
    assert index.propose(2) == [9, 1]
    assert NgramIndex([1, 2, 3], max_n=2).propose(4) == []  # the last token never occurred
    assert NgramIndex([7, 1, 2, 3, 4, 5, 7], max_n=3).propose(4) == [1, 2]  # one token: short


class Trimmable:
    """A cache layer that only counts (the fake model below keeps no state)."""

    offset = 0

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        self.offset -= n
        return n


def test_drafting_pauses_when_the_text_never_repeats_its_context():
    """A model whose next token is never what followed before in the context: every proposal
    misses, and after MISSES in a row the lookup stops proposing for a growing while."""
    import mlx.core as mx

    vocab = 1000
    cache = [Trimmable()]
    cache[0].offset = vocab - 1  # the prompt but its last token

    def at(position):  # the token at a position: never what followed it in the context
        return (position * 919 + 13) % vocab

    def model(inputs, cache):
        first = cache[0].offset + 1  # the position the first row predicts
        cache[0].offset += inputs.shape[1]
        return mx.eye(vocab)[at(mx.arange(first, first + inputs.shape[1]))][None] * 10

    counts = Counts()
    prompt = list(range(vocab))  # every token occurs: each 1-gram matches, t -> t + 1
    steps = lookup_generate_step(prompt, model, cache, lambda lp: mx.argmax(lp, axis=-1),
                                 PromptLookup(), 300, counts)
    out = [token for token, _, _ in steps]
    assert out == [at(vocab + i) for i in range(300)]  # the model's own tokens
    assert cache[0].offset == vocab + 299  # what was fed: the prompt and all but the last
    assert counts.accepted == 0 and 0 < counts.proposed <= 80, counts  # unpaused: 600


def test_sampled_tokens_keep_the_models_distribution():
    """A Markov-chain "model" over 3 tokens: the drafts are often right, and each kept token
    must still be the model's own sample, so the transition frequencies match the chain's."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    chain = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]]
    cache = [Trimmable()]

    def model(inputs, cache):
        cache[0].offset += inputs.shape[1]
        return mx.log(mx.array(chain))[inputs[0]][None]

    mx.random.seed(7)
    counts, n = Counts(), 6000
    prompt = [0, 1, 2, 0, 0, 1, 1, 2]
    steps = lookup_generate_step(prompt, model, cache, make_sampler(temp=1.0), PromptLookup(),
                                 n, counts)
    seq = prompt[-1:] + [token for token, _, _ in steps]
    assert len(seq) == n + 1 and counts.accepted > n // 4, counts
    for a in range(3):
        after = [b for x, b in zip(seq, seq[1:], strict=False) if x == a]
        freq = [after.count(b) / len(after) for b in range(3)]
        assert max(abs(f - p) for f, p in zip(freq, chain[a], strict=True)) < 0.04, (a, freq)


def test_greedy_output_is_token_identical_and_drafts_are_accepted(engine, tiny_model_dir,
                                                                  caplog):
    prompts = [(REPEAT, 60), (ASK, 40)]
    plain = [run(engine, job(tiny_model_dir, None, p, n)).context for p, n in prompts]
    with caplog.at_level(logging.INFO, logger="bridge.engine.solo"):
        looked = [run(engine, job(tiny_model_dir, PromptLookup(), p, n)).context
                  for p, n in prompts]
        small = run(engine, job(tiny_model_dir, PromptLookup(ngram=1, tokens=2))).context
    assert looked == plain and small == plain[0]
    stats = drafted([r.getMessage() for r in caplog.records])
    assert len(stats) == 3, "every job drafted from its context"
    tokens, from_draft, proposed = stats[0]
    assert from_draft >= tokens // 4 and proposed >= from_draft, stats  # the model repeats


def test_sampling_drafts_too(engine, tiny_model_dir, caplog):
    """Sampled tokens are checked against the draft the same way (each kept token is the
    model's own sample). The tiny model's logits span ~1: a low temperature keeps it repeating."""
    with caplog.at_level(logging.INFO, logger="bridge.engine.solo"):
        done = [run(engine, job(tiny_model_dir, PromptLookup(), n=50, temperature=0.02))
                for _ in range(2)]
    assert all(0 < d.eval_count <= 50 for d in done)
    stats = drafted([r.getMessage() for r in caplog.records])
    assert len(stats) == 2 and sum(from_draft for _, from_draft, _ in stats) > 0, stats


def test_a_second_request_puts_the_lookup_job_back_into_the_batch(engine, tiny_model_dir,
                                                                  caplog):
    alone = [run(engine, job(tiny_model_dir, None, n=200)).context,
             run(engine, job(tiny_model_dir, None, ASK, 40)).context]
    first = job(tiny_model_dir, PromptLookup(), n=200)
    with caplog.at_level(logging.INFO, logger="bridge.engine.solo"):
        engine.submit(first)
        first.events.get(timeout=60)  # decoding alone, drafting from the context
        time.sleep(0.05)
        second = job(tiny_model_dir, None, ASK, 40)
        engine.submit(second)
        assert [finish(first).context, finish(second).context] == alone
    stats = drafted([r.getMessage() for r in caplog.records])
    assert stats and stats[0][0] < 200, "it drafted alone, then left for the batch mid-stream"


@pytest.mark.parametrize("bad", [
    {"prompt-lookup": {"ngram": 0}}, {"prompt-lookup": {"tokens": 65}},
    {"prompt-lookup": {"size": 3}}, {"prompt-lookup": {"ngram": "3"}}, {"lookup": {}},
])
def test_bad_lookup_settings_are_a_clear_mapping_error(tmp_path, bad):
    with pytest.raises(MappingError, match="draft"):
        parse_mappings({"models": {"m": {"mlx": str(tmp_path), "draft": bad}}}, "t", tmp_path)


def test_lookup_settings_parse(tmp_path):
    _, models = parse_mappings({"models": {
        "a": {"mlx": str(tmp_path), "draft": "prompt-lookup"},
        "b": {"mlx": str(tmp_path), "draft": {"prompt-lookup": {"ngram": 2, "tokens": 12}}},
    }}, "t", tmp_path)
    assert models["a:latest"].lookup == PromptLookup() and models["a:latest"].draft is None
    assert models["b:latest"].lookup == PromptLookup(ngram=2, tokens=12)


@pytest.fixture(scope="module")
def lookup_server(tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("lookup-home")
    maps = write_mappings(home / "maps.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "tiny-lookup": {"mlx": str(tiny_model_dir), "backend": "mlx", "draft": "prompt-lookup"},
        "tiny-lookup2": {"mlx": str(tiny_model_dir), "backend": "mlx",
                         "draft": {"prompt-lookup": {"ngram": 2, "tokens": 4}}},
    })
    proc, url = start_server(["--mappings", str(maps), "--home", str(home), "--upstream", "none"])
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(
        raw.decode(errors="replace") for raw in iter(proc.stdout.readline, b"")),
        daemon=True).start()
    yield url, lines
    stop_server(proc)


def test_a_mapping_with_prompt_lookup_serves_the_same_answers(lookup_server):
    url, lines = lookup_server
    client = ollama.Client(host=url)
    messages = [{"role": "user", "content": REPEAT}]
    options = {"temperature": 0, "num_predict": 48}
    plain = client.chat(model="tiny", messages=messages, options=options)
    for name in ("tiny-lookup", "tiny-lookup2"):
        reply = client.chat(model=name, messages=messages, options=options)
        assert reply.message.content == plain.message.content
        assert reply.eval_count == plain.eval_count
    deadline = time.time() + 10
    while len(drafted(lines)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert [from_draft > 0 for _, from_draft, _ in drafted(lines)] == [True, True], lines[-5:]
