"""Speculative decoding (issue 17): a mapping's `draft:` model proposes tokens for a lone stream
(mlx-lm's speculative_generate_step); the job goes back to batched decoding when another arrives.
Greedy output is token-identical to plain decoding."""

from __future__ import annotations

import logging
import re
import time

import ollama
import pytest

from bridge.engine import Engine, Job, PromptSpec
from bridge.testing import build_self_draft
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings
from .helpers import finish

ASK = "Write a story about a llama who learned to code."


@pytest.fixture(scope="module")
def draft_dir(tiny_model_dir, tmp_path_factory):
    return build_self_draft(tiny_model_dir, tmp_path_factory.mktemp("drafts") / "tiny-1l", 1)


def job(path, draft, prompt=ASK, n=60) -> Job:
    return Job(str(path), "tiny", spec=PromptSpec(messages=[{"role": "user", "content": prompt}]),
               options=Options(temperature=0, num_predict=n),
               draft_path=str(draft) if draft else None)


def run(engine: Engine, j: Job) -> list[int]:
    engine.submit(j)
    return finish(j).context


@pytest.fixture
def engine():
    eng = Engine(num_parallel=4, prompt_cache_bytes=0)
    eng.start()
    yield eng
    eng.stop()


def drafted(caplog) -> list[tuple[int, int]]:
    return [tuple(map(int, re.findall(r"(?:tokens|from_draft)=(\d+)", r.getMessage())))
            for r in caplog.records if r.getMessage().startswith("speculative ")]


@pytest.mark.parametrize("which", ["self", "truncated"])
def test_greedy_output_is_token_identical_to_plain_decoding(engine, tiny_model_dir, draft_dir,
                                                            which, caplog):
    draft = tiny_model_dir if which == "self" else draft_dir
    plain = [run(engine, j)
             for j in [job(tiny_model_dir, None), job(tiny_model_dir, None, "Hi.", 30)]]
    with caplog.at_level(logging.INFO, logger="bridge.engine.solo"):
        spec = [run(engine, j)
                for j in [job(tiny_model_dir, draft), job(tiny_model_dir, draft, "Hi.", 30)]]
    assert spec == plain
    stats = drafted(caplog)
    assert stats, "the speculative path ran"
    if which == "self":  # the model as its own draft: every proposal is accepted
        assert all(from_draft >= tokens // 2 for tokens, from_draft in stats), stats


def test_a_second_request_puts_the_draft_job_back_into_the_batch(engine, tiny_model_dir,
                                                                 draft_dir):
    alone = [run(engine, j)
             for j in [job(tiny_model_dir, None, n=200), job(tiny_model_dir, None, "Hi.", 40)]]
    first = job(tiny_model_dir, draft_dir, n=200)
    engine.submit(first)
    first.events.get(timeout=60)  # decoding alone, speculatively
    time.sleep(0.05)
    second = job(tiny_model_dir, None, "Hi.", 40)
    engine.submit(second)
    assert [finish(first).context, finish(second).context] == alone


@pytest.fixture(scope="module")
def spec_server(tiny_model_dir, draft_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("spec-home")
    maps = write_mappings(home / "maps.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "tiny-spec": {"mlx": str(tiny_model_dir), "backend": "mlx", "draft": str(draft_dir)},
        "tiny-self": {"mlx": str(tiny_model_dir), "backend": "mlx", "draft": "tiny"},
        "tiny-lost": {"mlx": str(tiny_model_dir), "backend": "mlx",
                      "draft": str(home / "no-such-draft")},
    })
    proc, url = start_server(["--mappings", str(maps), "--home", str(home), "--upstream", "none"])
    yield url
    stop_server(proc)


def test_a_mapping_draft_serves_the_same_answers(spec_server):
    client = ollama.Client(host=spec_server)
    messages = [{"role": "user", "content": ASK}]
    options = {"temperature": 0, "num_predict": 40}
    plain = client.chat(model="tiny", messages=messages, options=options)
    for name in ("tiny-spec", "tiny-self"):  # a directory, and another mapped name
        reply = client.chat(model=name, messages=messages, options=options)
        assert reply.message.content == plain.message.content
        assert reply.eval_count == plain.eval_count


def test_a_missing_draft_is_a_clear_error(spec_server):
    client = ollama.Client(host=spec_server)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="tiny-lost", messages=[{"role": "user", "content": "hi"}])
    assert "draft model" in str(err.value) and "not on disk" in str(err.value)
    assert client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                       options={"num_predict": 2}).done
