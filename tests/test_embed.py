"""Embeddings on the MLX engine: /api/embed, legacy /api/embeddings and /v1/embeddings.

Served by the real engine on the tiny random-weight model (hidden size 64); vectors are the
mean-pooled final hidden states, so they are checked for shape, norm and consistency, not meaning.
"""

from __future__ import annotations

import base64
import math
import struct

import ollama
import openai
import pytest

HIDDEN = 64
TEXTS = ["the quick brown fox", "hello", "a much longer sentence about embeddings and vectors"]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def embed(client, **body):
    resp = client.post("/api/embed", json={"model": "tiny", **body})
    return resp.status_code, resp.get_json()


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_embed_single_is_normalised_with_metrics(client):
    status, body = embed(client, input="hello world")
    assert status == 200 and body["model"] == "tiny"
    [vector] = body["embeddings"]
    assert len(vector) == HIDDEN and abs(norm(vector) - 1) < 1e-5
    assert body["prompt_eval_count"] > 0 and body["total_duration"] >= body["load_duration"] > 0


def test_batch_keeps_order_and_equals_single_inputs(client):
    status, body = embed(client, input=TEXTS)
    assert status == 200 and len(body["embeddings"]) == len(TEXTS)
    singles = [embed(client, input=t)[1] for t in TEXTS]
    for vector, single in zip(body["embeddings"], singles, strict=True):
        assert close(vector, single["embeddings"][0])
    assert body["prompt_eval_count"] == sum(s["prompt_eval_count"] for s in singles)
    # different texts, different vectors
    assert not close(body["embeddings"][0], body["embeddings"][1])


def test_dimensions_cut_then_renormalise(client):
    full = embed(client, input="hello")[1]["embeddings"][0]
    status, body = embed(client, input="hello", dimensions=8)
    [cut] = body["embeddings"]
    assert status == 200 and len(cut) == 8 and abs(norm(cut) - 1) < 1e-5
    scale = norm(full[:8])
    assert close(cut, [x / scale for x in full[:8]])
    assert len(embed(client, input="hello", dimensions=10_000)[1]["embeddings"][0]) == HIDDEN
    status, body = embed(client, input="hello", dimensions=-1)
    assert status == 400 and "dimensions" in body["error"]


def test_truncate(client):
    long = " ".join(["word"] * 50)
    status, body = embed(client, input=long, truncate=False, options={"num_ctx": 8})
    assert status == 400 and body == {"error": "the input length exceeds the context length"}
    status, body = embed(client, input=long, options={"num_ctx": 8})  # truncate defaults to true
    assert status == 200 and body["prompt_eval_count"] == 8 and len(body["embeddings"][0]) == HIDDEN


@pytest.mark.parametrize("value", [5, {"a": 1}, ["ok", 3], [None], True])
def test_invalid_input_type(client, value):
    assert embed(client, input=value) == (400, {"error": "invalid input type"})


@pytest.mark.parametrize("body", [{}, {"input": ""}, {"input": []}])
def test_empty_input_loads_the_model(client, body):
    status, out = embed(client, **body)
    assert status == 200 and out == {"model": "tiny", "embeddings": []}
    assert "tiny:latest" in [m["name"] for m in client.get("/api/ps").get_json()["models"]]


def test_legacy_embeddings_are_not_normalised(client):
    resp = client.post("/api/embeddings", json={"model": "tiny", "prompt": "hello world"})
    raw = resp.get_json()["embedding"]
    assert resp.status_code == 200 and len(raw) == HIDDEN and abs(norm(raw) - 1) > 1e-3
    normalised = embed(client, input="hello world")[1]["embeddings"][0]
    assert close([x / norm(raw) for x in raw], normalised)
    empty = client.post("/api/embeddings", json={"model": "tiny", "prompt": ""})
    assert empty.status_code == 200 and empty.get_json() == {"embedding": []}
    missing = client.post("/api/embeddings", json={"prompt": "x"})
    assert missing.status_code == 400 and missing.get_json() == {"error": "model is required"}


def test_keep_alive_zero_unloads_after_embedding(client):
    status, _ = embed(client, input="bye", keep_alive=0)
    assert status == 200
    assert "tiny:latest" not in [m["name"] for m in client.get("/api/ps").get_json()["models"]]


def test_v1_embeddings_through_the_flask_client(client):
    resp = client.post("/v1/embeddings", json={"model": "tiny", "input": ["hello", ""]})
    body = resp.get_json()
    assert resp.status_code == 200 and body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] > 0
    assert all(abs(norm(d["embedding"]) - 1) < 1e-5 for d in body["data"])
    b64 = client.post("/v1/embeddings", json={"model": "tiny", "input": "hello",
                                              "encoding_format": "base64"})
    packed = base64.b64decode(b64.get_json()["data"][0]["embedding"])
    assert close(list(struct.unpack(f"<{HIDDEN}f", packed)), body["data"][0]["embedding"])


def test_ollama_python_client(server):
    c = ollama.Client(host=server)
    out = c.embed(model="tiny", input=TEXTS[:2])
    assert len(out.embeddings) == 2 and all(abs(norm(v) - 1) < 1e-5 for v in out.embeddings)
    single = c.embed(model="tiny", input=TEXTS[1])
    assert close(list(single.embeddings[0]), list(out.embeddings[1]))
    legacy = c.embeddings(model="tiny", prompt=TEXTS[1])
    assert len(legacy.embedding) == HIDDEN
    assert close([x / norm(legacy.embedding) for x in legacy.embedding], list(single.embeddings[0]))


def test_openai_client(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
    out = c.embeddings.create(model="tiny", input=TEXTS)  # the client asks for base64 by default
    floats = c.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    assert [d.index for d in out.data] == [0, 1, 2] and out.usage.prompt_tokens > 0
    for a, b in zip(out.data, floats.data, strict=True):
        assert len(a.embedding) == HIDDEN and close(a.embedding, b.embedding)
    short = c.embeddings.create(model="tiny", input="hello", dimensions=4, encoding_format="float")
    assert len(short.data[0].embedding) == 4 and abs(norm(short.data[0].embedding) - 1) < 1e-5


def test_models_without_a_backbone_are_unsupported():
    from bridge.engine.embed import backbone
    from bridge.errors import Unsupported

    with pytest.raises(Unsupported, match="do not support embeddings"):
        backbone(object())


# ---- bounds and fairness ---------------------------------------------------------------------


def test_more_inputs_than_the_cap_is_a_clear_400(client):
    status, body = embed(client, input=["hi"] * 2049)
    assert status == 400
    assert body == {"error": "too many inputs: 2049 (the limit is 2048 per request; "
                             "MLX_BRIDGE_MAX_EMBED_INPUTS)"}
    resp = client.post("/v1/embeddings", json={"model": "tiny", "input": ["hi"] * 2049})
    assert (resp.status_code == 400
            and "too many inputs: 2049" in resp.get_json()["error"]["message"])


@pytest.fixture(scope="module")
def capped(mappings_file, tmp_path_factory):
    """An app whose caps are set through the environment: 3 inputs, 40 tokens."""
    from bridge.app import create_app
    from bridge.config import load_config

    env = {"MLX_BRIDGE_MAX_EMBED_INPUTS": "3", "MLX_BRIDGE_MAX_EMBED_TOKENS": "40"}
    config = load_config(env, mappings_path=mappings_file, home=tmp_path_factory.mktemp("capped"),
                         upstream="none")
    application = create_app(config)
    application.extensions["bridge"].start()
    yield application.test_client()
    application.extensions["bridge"].stop()


def test_the_caps_come_from_the_environment(capped):
    status, body = embed(capped, input=["a", "b", "c", "d"])
    assert status == 400 and body["error"].startswith("too many inputs: 4 (the limit is 3 per "
                                                      "request")
    status, body = embed(capped, input=["hello world"] * 3)
    assert status == 200 and body["prompt_eval_count"] <= 40
    # 3 x 28
    status, body = embed(capped, input=["the quick brown fox jumps over the lazy dog"] * 3)
    assert status == 400
    assert body == {"error": "too many tokens: 84 (the limit is 40 per request; "
                             "MLX_BRIDGE_MAX_EMBED_TOKENS)"}
    assert embed(capped, input="hello")[0] == 200, "the engine goes on"


def test_a_big_embedding_request_does_not_stall_a_streaming_chat(server):
    """A running chat keeps streaming (bounded gaps) while a large /api/embed is computed."""
    import json
    import threading
    import time

    import requests

    # ~44k tokens, seconds of work
    inputs = ["The quick brown fox jumps over the lazy dog. " * 10] * 150
    done: dict = {}

    def big_embed() -> None:
        done["sent"] = time.monotonic()
        done["resp"] = requests.post(server + "/api/embed", json={"model": "tiny", "input": inputs},
                                     timeout=300)
        done["at"] = time.monotonic()

    # This prompt's greedy answer on the tiny model decodes to text at least every 30 tokens for
    # its first ~9700 tokens, so a pause between lines is a pause of the engine.
    body = {"model": "tiny", "messages": [{"role": "user", "content": "The quick brown fox"}],
            "stream": True, "options": {"temperature": 0, "num_predict": 9000, "num_ctx": 16384}}
    times: list[float] = []
    with requests.post(server + "/api/chat", json=body, stream=True, timeout=300) as chat:
        lines = chat.iter_lines()
        next(lines)
        worker = threading.Thread(target=big_embed)
        worker.start()
        for line in lines:
            times.append(time.monotonic())
            assert "error" not in json.loads(line)
            if "at" in done:
                break  # the embedding is answered: enough seen
    worker.join()
    assert done["resp"].status_code == 200 and len(done["resp"].json()["embeddings"]) == len(inputs)
    during = [t for t in times if done["sent"] <= t <= done["at"]]
    points = [done["sent"], *during, done["at"]]
    gap = max(b - a for a, b in zip(points, points[1:], strict=False))
    assert gap < 1.0, (f"longest pause {gap:.2f} s while embedding for "
                       f"{done['at'] - done['sent']:.1f} s")
    assert len(during) > 20, f"the chat kept streaming during the embedding ({len(during)} chunks)"


def test_a_long_input_is_forwarded_in_pieces_and_equals_one_pass(client, tiny_model_dir):
    """Over 512 tokens an input is computed in pieces (one slice each) through a KV cache."""
    import mlx.core as mx
    from mlx_lm import load

    from bridge.engine.embed import CHUNK_TOKENS
    from bridge.serving.embeddings import normalise

    text = "The quick brown fox jumps over the lazy dog. " * 40
    status, body = embed(client, input=text)
    model, tokenizer = load(str(tiny_model_dir))
    tokens = tokenizer.encode(text)
    assert status == 200 and body["prompt_eval_count"] == len(tokens) > 2 * CHUNK_TOKENS
    hidden = model.model(mx.array([tokens]))  # the whole input at once, for reference
    reference = normalise(mx.mean(hidden[0].astype(mx.float32), axis=0).tolist())
    assert close(body["embeddings"][0], reference, tol=1e-4)


def test_a_huge_input_is_cut_before_it_is_encoded_with_the_same_vector(client):
    """Only the start that the window can hold is encoded (on the request thread): the vector
    and count equal those of the input cut to the window; without truncation a 400 at once."""
    words = "the quick brown fox jumps over the lazy dog " * 2_000
    huge = words * 50  # ~4.4 MB: encoded whole, it stalled every stream for seconds
    status, body = embed(client, input=huge, options={"num_ctx": 64})
    assert status == 200 and body["prompt_eval_count"] == 64
    _, cut = embed(client, input=words, options={"num_ctx": 64})
    assert close(body["embeddings"][0], cut["embeddings"][0])
    status, body = embed(client, input=huge, truncate=False, options={"num_ctx": 64})
    assert status == 400 and body == {"error": "the input length exceeds the context length"}


@pytest.fixture(scope="module")
def long_server(tmp_path_factory, long_model_dir):
    """A real server on the 128k-context tiny model: a stream that outlasts an embedding."""
    from .conftest import start_server, stop_server, write_mappings

    root = tmp_path_factory.mktemp("embed-long")
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(long_model_dir)}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


def test_a_huge_embedding_does_not_stall_a_stream_beside_it(long_server):
    """A stream's tokens keep coming while a 20 MB input is embedded next to it (the engine
    thread encoded such an input whole: seconds without a token for everyone)."""
    import threading
    import time

    import requests

    gaps: list[float] = []
    first = threading.Event()

    def stream() -> None:
        body = {"model": "tiny", "prompt": "Once", "raw": True,
                "options": {"temperature": 0, "num_predict": 100_000, "num_ctx": 100_000}}
        last = None
        with requests.post(long_server + "/api/generate", json=body, stream=True,
                           timeout=120) as r:
            for _ in r.iter_lines():
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now
                first.set()
                if done.is_set():
                    return

    done = threading.Event()
    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(60)
    huge = "lorem ipsum dolor sit amet " * 750_000
    r = requests.post(long_server + "/api/embed", timeout=120,
                      json={"model": "tiny", "input": huge, "options": {"num_ctx": 2048}})
    time.sleep(0.5)  # the stream goes on a moment after
    done.set()
    reader.join(120)
    assert r.status_code == 200, r.text[:300]
    assert len(gaps) > 100
    assert max(gaps) < 1.0, f"the stream stalled {max(gaps):.2f}s"
