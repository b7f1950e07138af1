"""Real logprobs on MLX models: native /api/generate and /api/chat, /v1/chat/completions and
/v1/completions, streamed and not, checked against raw mlx-lm's log-softmax for the same prompt.

The tiny model runs in-process (`app`) for the shapes and on a real server process (`server`)
for the values, the batched path (4 concurrent requests), the single path (a seeded job) and the
openai SDK. The reference forward pass runs in this process with mlx-lm, while no request runs.
"""

from __future__ import annotations

import json
import math
import threading
import time

import openai
import pytest
import requests

from .conftest import TINY

GREEDY = {"temperature": 0, "num_predict": 6}
PROMPTS = ["hello there", "the cat sat", "numbers 1 2 3", "why is the sky"]


def generate(url: str, prompt: str, **extra) -> dict:
    body = {"model": TINY, "prompt": prompt, "stream": False, "logprobs": True,
            "top_logprobs": 5, "options": dict(GREEDY), **extra}
    r = requests.post(f"{url}/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def ndjson(resp) -> list[dict]:
    return [json.loads(line) for line in resp.data.decode().splitlines() if line]


def sse(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def check_entry(entry: dict, top: int) -> None:
    """Ollama's shape; greedy: the chosen token is the most likely one."""
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
    assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
    assert entry["logprob"] <= 0
    alts = entry["top_logprobs"]
    assert len(alts) == top
    assert all(set(a) == {"token", "logprob", "bytes"} for a in alts)
    values = [a["logprob"] for a in alts]
    assert values == sorted(values, reverse=True)
    assert alts[0]["bytes"] == entry["bytes"]
    assert alts[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-6)


def reference_logits(model_dir, prompt_tokens: list[int]):
    """mlx-lm's own forward pass over the prompt: the next-token logits."""
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(model_dir))
    return model(mx.array(prompt_tokens)[None])[0, -1, :].astype(mx.float32)


def reference_logprobs(model_dir, prompt_tokens: list[int]) -> list[float]:
    """The log-softmax of those logits."""
    import mlx.core as mx

    logits = reference_logits(model_dir, prompt_tokens)
    return (logits - mx.logsumexp(logits)).tolist()


# --- shapes, in-process ---------------------------------------------------------------------

def test_generate_not_streamed_has_one_entry_per_token(app):
    r = app.test_client().post("/api/generate", json={
        "model": TINY, "prompt": "hello", "stream": False, "logprobs": True, "top_logprobs": 3,
        "options": GREEDY})
    body = r.get_json()
    assert r.status_code == 200 and body["done_reason"] == "length"
    assert len(body["logprobs"]) == body["eval_count"] == GREEDY["num_predict"]
    for entry in body["logprobs"]:
        check_entry(entry, 3)
    # the tokens' bytes are the response (the detokenizer drops a leading space, and bytes at
    # the end that make no character: Ollama's runner drops them)
    joined = b"".join(bytes(e["bytes"]) for e in body["logprobs"]).decode("utf-8", "replace")
    assert joined.rstrip("\ufffd").lstrip(" ") == body["response"].lstrip(" ")


def test_chat_streamed_chunks_carry_the_same_logprobs(app):
    client = app.test_client()
    body = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
            "top_logprobs": 2, "options": GREEDY}
    lines = ndjson(client.post("/api/chat", json=body))
    whole = client.post("/api/chat", json={**body, "stream": False}).get_json()
    streamed = [e for line in lines[:-1] for e in line.get("logprobs", [])]
    assert all("logprobs" in line for line in lines[:-1])  # every text chunk has its tokens
    assert "logprobs" not in lines[-1] and lines[-1]["done"]
    assert [e["token"] for e in streamed] == [e["token"] for e in whole["logprobs"]]
    assert [e["logprob"] for e in streamed] == pytest.approx(
        [e["logprob"] for e in whole["logprobs"]], abs=1e-4)
    assert len(streamed) == whole["eval_count"]


def test_a_stop_string_keeps_its_tokens_reported(app):
    """The tokens that formed a stop string are reported, though their text is cut."""
    client = app.test_client()
    base = {"model": TINY, "prompt": "hello", "stream": False, "logprobs": True,
            "options": {**GREEDY, "num_predict": 8}}
    tokens = [e["token"] for e in client.post("/api/generate", json=base).get_json()["logprobs"]]
    text = ""
    for i, token in enumerate(tokens):
        if i and token.strip().isalpha() and token.strip() not in text + token[:-1]:
            break
        text += token
    else:
        raise AssertionError(f"no usable stop token in {tokens}")
    stop = token.strip()
    lines = ndjson(client.post("/api/generate", json={
        **base, "stream": True, "options": {**base["options"], "stop": [stop]}}))
    streamed = [e["token"] for line in lines for e in line.get("logprobs", [])]
    assert lines[-1]["done_reason"] == "stop"
    assert "".join(line["response"] for line in lines) == (text + token[:token.index(stop)])
    assert streamed == tokens[: i + 1]


def test_top_logprobs_alone_asks_for_logprobs_and_zero_gives_no_alternatives(app):
    client = app.test_client()
    base = {"model": TINY, "prompt": "hello", "stream": False, "options": GREEDY}
    only_top = client.post("/api/generate", json={**base, "top_logprobs": 2}).get_json()
    assert len(only_top["logprobs"][0]["top_logprobs"]) == 2
    bare = client.post("/api/generate", json={**base, "logprobs": True}).get_json()
    assert set(bare["logprobs"][0]) == {"token", "logprob", "bytes"}  # omitempty, as Ollama


def test_no_logprobs_unless_asked(app):
    client = app.test_client()
    gen = client.post("/api/generate", json={"model": TINY, "prompt": "hello", "stream": False,
                                             "options": GREEDY}).get_json()
    assert "logprobs" not in gen
    lines = ndjson(client.post("/api/chat", json={
        "model": TINY, "messages": [{"role": "user", "content": "hi"}], "options": GREEDY}))
    assert not any("logprobs" in line for line in lines)
    v1 = client.post("/v1/chat/completions", json={
        "model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert "logprobs" not in v1.get_json()["choices"][0]


def test_structured_output_reports_the_masked_distribution(app):
    """With `format`, the grammar's mask is applied before the log-softmax: the reported
    distribution is the one sampled from, so only allowed tokens appear (no -inf, no '!')."""
    r = app.test_client().post("/api/generate", json={
        "model": TINY, "prompt": "json please", "stream": False, "format": "json",
        "logprobs": True, "top_logprobs": 20, "options": {"temperature": 0, "num_predict": 3}})
    body = r.get_json()
    first = body["logprobs"][0]
    alts = first["top_logprobs"]
    assert body["response"].lstrip().startswith("{")
    assert all(a["token"].strip() in ("", "{") or a["token"].lstrip().startswith("{")
               for a in alts), alts
    assert math.fsum(math.exp(a["logprob"]) for a in alts) == pytest.approx(1.0, abs=1e-3)
    assert first["logprob"] > math.log(1 / 384) + 1  # far above the unmasked ~uniform value


# --- values, on a real server ---------------------------------------------------------------

def test_first_token_matches_mlx_lm_log_softmax(server, tiny_model_dir):
    body = generate(server, "hello there")
    prompt = body["context"][: body["prompt_eval_count"]]
    ref = reference_logprobs(tiny_model_dir, prompt)
    first = body["logprobs"][0]
    best = max(range(len(ref)), key=ref.__getitem__)
    assert first["logprob"] == pytest.approx(ref[best], abs=1e-3)
    assert first["logprob"] == pytest.approx(max(ref), abs=1e-6 + 1e-3)
    ranked = sorted(ref, reverse=True)[:5]
    assert [a["logprob"] for a in first["top_logprobs"]] == pytest.approx(ranked, abs=1e-3)
    assert body["context"][body["prompt_eval_count"]] == best  # greedy: it took the argmax


def test_repeat_penalty_is_in_the_reported_distribution(server, tiny_model_dir):
    """Logits processors run before the log-softmax: with repeat_penalty the first token's
    values are those of the penalised logits (mlx-lm's rule on the last 64 prompt tokens)."""
    import mlx.core as mx

    body = generate(server, "hello hello there", options={**GREEDY, "repeat_penalty": 3.0})
    prompt = body["context"][: body["prompt_eval_count"]]
    logits = reference_logits(tiny_model_dir, prompt)
    seen = mx.array(sorted(set(prompt[-64:])))
    picked = logits[seen]
    logits[seen] = mx.where(picked < 0, picked * 3.0, picked / 3.0)
    penalised = (logits - mx.logsumexp(logits)).tolist()
    ranked = sorted(penalised, reverse=True)[:5]
    first = body["logprobs"][0]
    assert [a["logprob"] for a in first["top_logprobs"]] == pytest.approx(ranked, abs=1e-3)
    plain = generate(server, "hello hello there")["logprobs"][0]["top_logprobs"]
    assert [a["logprob"] for a in plain] != pytest.approx(ranked, abs=1e-3)


def test_batched_concurrent_requests_match_their_solo_runs(server):
    solo = [generate(server, p) for p in PROMPTS]
    together: list[dict | None] = [None] * len(PROMPTS)
    gate = threading.Barrier(len(PROMPTS))

    def one(i: int) -> None:
        gate.wait()
        together[i] = generate(server, PROMPTS[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for alone, batched in zip(solo, together, strict=True):
        assert batched is not None
        assert [e["token"] for e in batched["logprobs"]] == [e["token"] for e in alone["logprobs"]]
        for a, b in zip(alone["logprobs"], batched["logprobs"], strict=True):
            assert b["logprob"] == pytest.approx(a["logprob"], abs=1e-3)
            assert [t["logprob"] for t in b["top_logprobs"]] == pytest.approx(
                [t["logprob"] for t in a["top_logprobs"]], abs=1e-3)
            check_entry(b, 5)


def test_seeded_job_on_the_single_path_reports_the_same_values(server):
    batched = generate(server, "the cat sat")
    single = generate(server, "the cat sat", options={**GREEDY, "seed": 42})
    assert [e["token"] for e in single["logprobs"]] == [e["token"] for e in batched["logprobs"]]
    assert [e["logprob"] for e in single["logprobs"]] == pytest.approx(
        [e["logprob"] for e in batched["logprobs"]], abs=1e-3)


def test_openai_sdk_chat_completions_with_logprobs(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="x")
    msgs = [{"role": "user", "content": "hi"}]
    resp = client.chat.completions.create(model=TINY, messages=msgs, logprobs=True,
                                          top_logprobs=3, max_tokens=5, temperature=0)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
    stream = client.chat.completions.create(model=TINY, messages=msgs, logprobs=True,
                                            top_logprobs=3, max_tokens=5, temperature=0,
                                            stream=True)
    streamed = [c for chunk in stream for choice in chunk.choices if choice.logprobs
                for c in choice.logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-4)


def test_ollama_python_client_reads_them(server):
    import ollama

    client = ollama.Client(host=server)
    msgs = [{"role": "user", "content": "hi"}]
    whole = client.chat(model=TINY, messages=msgs, logprobs=True, top_logprobs=2,
                        options={"temperature": 0, "num_predict": 4})
    assert len(whole.logprobs) == whole.eval_count
    assert all(len(lp.top_logprobs) == 2 for lp in whole.logprobs)
    parts = [lp for chunk in client.generate(model=TINY, prompt="hi", logprobs=True, stream=True,
                                             options={"temperature": 0, "num_predict": 4})
             for lp in chunk.logprobs or []]
    assert len(parts) == 4 and all(lp.top_logprobs is None for lp in parts)


def test_openai_sdk_responses_with_logprobs(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="x")
    kw = {"model": TINY, "input": "hi", "max_output_tokens": 5, "temperature": 0,
          "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    resp = client.responses.create(**kw)
    part = resp.output[0].content[0]
    assert resp.top_logprobs == 2
    assert len(part.logprobs) == resp.usage.output_tokens
    assert all(len(lp.top_logprobs) == 2 and lp.top_logprobs[0].token == lp.token
               for lp in part.logprobs)
    deltas, done = [], None
    for event in client.responses.create(**kw, stream=True):
        if event.type == "response.output_text.delta":
            deltas += event.logprobs
        elif event.type == "response.output_text.done":
            done = event.logprobs
    assert [d.token for d in deltas] == [lp.token for lp in part.logprobs]
    assert done is not None and [d.token for d in done] == [lp.token for lp in part.logprobs]
    plain = client.responses.create(model=TINY, input="hi", max_output_tokens=3)
    assert plain.output[0].content[0].logprobs == []


def test_v1_completions_legacy_logprobs(server):
    body = {"model": TINY, "prompt": "hello", "logprobs": 2, "max_tokens": 5, "temperature": 0}
    whole = requests.post(f"{server}/v1/completions", json=body, timeout=60).json()
    lp = whole["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == 5
    assert all(len(t) <= 2 and max(t.values()) == pytest.approx(v)
               for t, v in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True))
    assert lp["text_offset"][0] == 0
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(5)]
    events = sse(requests.post(f"{server}/v1/completions", json={**body, "stream": True},
                               timeout=60).content.decode())
    tokens = [t for e in events for t in (e["choices"][0]["logprobs"] or {}).get("tokens", [])]
    assert tokens == lp["tokens"]
    plain = requests.post(f"{server}/v1/completions", json={**body, "logprobs": None},
                          timeout=60).json()
    assert plain["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(("path", "extra", "text"), [
    ("/api/generate", {"top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ("/api/chat", {"top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
    ("/api/chat", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs must be between 0 and 20"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/responses", {"top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ("/v1/responses", {"include": ["message.output_text.logprobz"]}, "logprobz"),
    ("/v1/messages", {"logprobs": True, "max_tokens": 5}, "logprobs"),
])
def test_bad_logprobs_values_are_400(server, path, extra, text):
    what = {"/api/generate": {"prompt": "hi"}, "/v1/completions": {"prompt": "hi"},
            "/v1/responses": {"input": "hi"}}.get(path, {"messages": [{"role": "user",
                                                                       "content": "hi"}]})
    body = {"model": TINY, **what, **extra}
    r = requests.post(f"{server}{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert text in r.text


def test_a_heavy_logprobs_request_does_not_hold_up_the_others(server):
    """20 alternatives per token on a long generation: a short chat beside it still answers."""
    body = {"model": TINY, "prompt": "hello", "logprobs": True, "top_logprobs": 20,
            "options": {"temperature": 0, "num_predict": 1500, "num_ctx": 2048}}
    with requests.post(f"{server}/api/generate", json=body, stream=True, timeout=120) as heavy:
        lines = heavy.iter_lines()
        assert len(json.loads(next(lines))["logprobs"][0]["top_logprobs"]) == 20  # it is running
        started = time.monotonic()
        assert requests.get(f"{server}/api/version", timeout=10).status_code == 200
        short = requests.post(f"{server}/api/chat", json={
            "model": TINY, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 3}}, timeout=10)
        elapsed = time.monotonic() - started
        assert short.status_code == 200
        assert elapsed < 3, f"a short chat took {elapsed:.1f}s beside the heavy request"
        rest = [json.loads(line) for line in lines]
    assert rest[-1]["done"] and rest[-1]["eval_count"] > 200, rest[-1]  # a long one indeed


def test_upstream_models_get_the_fields_as_sent(protocol_bridges):
    """A model only the upstream serves: logprobs / top_logprobs reach it unchanged (here the
    upstream is another bridge, whose engine answers them)."""
    url, _ = protocol_bridges
    native = requests.post(f"{url}/api/chat", json={
        "model": "up-only", "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "logprobs": True, "top_logprobs": 2, "options": {"temperature": 0, "num_predict": 3}},
        timeout=60).json()
    assert len(native["logprobs"]) == native["eval_count"]
    assert all(len(e["top_logprobs"]) == 2 for e in native["logprobs"])
    v1 = requests.post(f"{url}/v1/chat/completions", json={
        "model": "up-only", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "logprobs": True, "top_logprobs": 1}, timeout=60).json()
    assert all(len(c["top_logprobs"]) == 1 for c in v1["choices"][0]["logprobs"]["content"])


def test_thinking_tokens_are_reported_with_their_thinking(protocol_bridges):
    """The scripted think model: `<think>`, the thought, `</think>`, the answer, then EOS (not
    reported). Streamed, each token comes with the chunk that carries its text."""
    from .scripted_model import HELLO, THOUGHT

    url, _ = protocol_bridges
    body = {"model": "think", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
            "options": {"temperature": 0, "num_predict": 10}}
    whole = requests.post(f"{url}/api/chat", json={**body, "stream": False}, timeout=60).json()
    assert [e["token"] for e in whole["logprobs"]] == ["<think>", THOUGHT, "</think>", HELLO]
    assert whole["eval_count"] == 5 and whole["done_reason"] == "stop"
    assert all(e["logprob"] > -1e-3 for e in whole["logprobs"])  # the script leads by ~40 nats
    lines = [json.loads(x) for x in requests.post(f"{url}/api/chat", json=body,
                                                  timeout=60).iter_lines() if x]
    thought = [e["token"] for x in lines if x["message"].get("thinking")
               for e in x["logprobs"]]
    said = [e["token"] for x in lines if x["message"]["content"] for e in x["logprobs"]]
    assert THOUGHT in thought and said[-1] == HELLO
