"""Structured output: `format` enforced by constrained decoding on real generations.

The tiny model has random weights, so without the constraint its output is never JSON: every
test here passes only because the grammar masks the logits at each step. Greedy decoding
repeats itself forever inside an unbounded string or number, so schemas that run greedy bound
their strings/numbers; free-form `format: "json"` runs sampled (seeded: reproducible).
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .scripted_model import start_app
from .structured_models import Order, Team

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
                                     {"temperature": 1.5, "seed": 11}],
                         ids=["greedy", "t1", "t1.5"])
def test_schema_output_always_validates(client, stream, options):
    text, final = chat(client, PERSON, stream, **options)
    jsonschema.validate(json.loads(text), PERSON)
    assert final["done_reason"] == "stop"  # the grammar completed and forced EOS


def test_streamed_equals_non_streamed(client):
    assert (chat(client, PERSON, True, temperature=0)[0]
            == chat(client, PERSON, False, temperature=0)[0])


def test_format_json_gives_an_object_unless_the_limit_cuts_it(client):
    """Free-form JSON has no bound: a random model sometimes nests on until num_predict."""
    outcomes = []
    for seed in range(1, 7):
        text, final = chat(client, "json", seed % 2 == 0, temperature=0.9, seed=seed,
                           num_predict=200)
        if final["done_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert (final["done_reason"] == "length" and final["eval_count"] == 200
                    and text.startswith("{"))
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
        resp = client.application.test_client().post("/api/generate", json=body)
        results.append(resp.get_json()["response"])

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 4
    for text in results:
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("fmt,status,words", [
    ({"type": "nonsense"}, 400, "Unrecognized schema"),
    ({"type": "object", "dependentSchemas": {"a": {}}}, 400,
     "['dependentSchemas'] are not supported"),
    ({"type": "string", "pattern": "^(?<=a)b$"}, 400, "look-around"),
    ({"type": "string", "pattern": "abc"}, 400, "Pattern must start with '^' and end with '$'"),
    ("yaml", 400, 'invalid format: "yaml"'),
    # llguidance's parser would give up mid-answer past ~1000 branches at one position
    ({"type": "object", "properties": {f"k{i}": {} for i in range(600)}}, 400,
     "600 optional properties in one object (at most 500)"),
    ({"anyOf": [{"const": i} for i in range(600)]}, 400, "600 `anyOf`/`oneOf` alternatives"),
    # ... and its 16-bit symbol table would panic at job start, on the engine thread
    ({"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(20000)},
      "required": [f"k{i}" for i in range(20000)]}, 400, "more than 10000 grammar rules"),
])
def test_unusable_schemas_are_a_clear_400(client, fmt, status, words):
    resp = client.post("/api/chat", json={"model": "tiny", "messages": Q, "format": fmt})
    assert resp.status_code == status and words in resp.get_json()["error"]


def test_an_empty_schema_means_any_json_object(client):
    """`format: {}` is llama.cpp's any-object rule (spec §3c), not "no format" (it was: `{}` is
    falsy)."""
    for seed in (5, 6):
        out = client.post("/api/chat", json={"model": "tiny", "messages": Q, "format": {},
                                             "stream": False,
                                             "options": {"num_predict": 20, "seed": seed}})
        assert out.status_code == 200
        assert out.get_json()["message"]["content"].lstrip().startswith("{")


def test_v1_response_format(client):
    base = {"model": "tiny", "messages": Q, "temperature": 0.9, "seed": 5, "max_tokens": 400}
    finished = []
    for seed in (5, 6, 7, 8):  # free-form JSON from random weights may nest on until max_tokens
        out = client.post("/v1/chat/completions", json={**base, "seed": seed, "response_format":
                                                         {"type": "json_object"}}).get_json()
        choice = out["choices"][0]
        assert choice["message"]["content"].startswith("{")
        if choice["finish_reason"] == "stop":
            finished.append(json.loads(choice["message"]["content"]))
    assert finished and all(isinstance(v, dict) for v in finished)
    schema_fmt = {"type": "json_schema",
                  "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    out = client.post("/v1/chat/completions",
                      json={**base, "response_format": schema_fmt}).get_json()
    jsonschema.validate(json.loads(out["choices"][0]["message"]["content"]), PERSON)
    bad = client.post("/v1/chat/completions", json={**base, "response_format": {"type": "xml"}})
    assert bad.status_code == 400 and bad.get_json()["error"]["type"] == "invalid_request_error"


# ---- Ollama's semantics (llama.cpp json-schema-to-grammar, spec §3c) -------------------------

def _open(schema):
    """`schema` as Pydantic writes it: no `additionalProperties` anywhere."""
    if isinstance(schema, dict):
        return {k: _open(v) for k, v in schema.items() if k != "additionalProperties"}
    return schema


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_absent_additional_properties_means_no_extra_keys(client, seed):
    """Before, llguidance read a Pydantic-style schema as open: the random model added keys."""
    text, final = chat(client, _open(PERSON), temperature=1.0, seed=seed)
    jsonschema.validate(json.loads(text), PERSON)  # PERSON is closed at every level
    assert final["done_reason"] == "stop"


def test_greedy_numbers_stop_at_16_digits(client):
    """Greedy decoding repeats a digit forever; llama.cpp's number rule caps it at 16 digits in the
    integral part, the fraction and the exponent, so the value (and the generation) ends."""
    schema = {"type": "object", "additionalProperties": False, "required": ["n"],
              "properties": {"n": {"type": "number"}}}
    text, final = chat(client, schema, temperature=0, num_predict=200)
    assert final["done_reason"] == "stop" and set(json.loads(text)) == {"n"}
    for number in re.findall(r"[-+.eE0-9]+", text):
        assert all(len(run) <= 16 for run in re.findall(r"[0-9]+", number)), text


@pytest.fixture(scope="module")
def lltok(tiny_model_dir):
    import llguidance
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return llguidance.LLTokenizer(tok.backend_tokenizer.to_str(), n_vocab=len(tok),
                                  eos_token=[tok.eos_token_id])


def accepts(lltok, fmt, text: str) -> bool:
    """Does the grammar for `fmt` take `text` as a whole value? (byte-level: any tokenization)"""
    import llguidance

    from bridge.engine.structured import grammar_for

    matcher = llguidance.LLMatcher(lltok, grammar_for(fmt))
    ids = lltok.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


OPT = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"},
                                        "c": {"type": "boolean"}}, "required": ["a"]}
SEMANTICS = [  # (format, text, accepted?) from spec §3c
    (OPT, '{"a":1,"b":"x","c":true}', True),
    (OPT, '{"a":1,"c":true}', True),
    (OPT, '{"a":1,"x":2}', False),  # absent additionalProperties: no extra keys
    ({**OPT, "additionalProperties": True}, '{"a":1,"x":[2]}', True),
    ({**OPT, "additionalProperties": {"type": "integer"}}, '{"a":1,"x":"s"}', False),
    (OPT, '{"b":"x","a":1}', False),  # fixed order: required keys first
    (OPT, '{"a":1,"c":true,"b":"x"}', False),  # then optional keys in `properties` order
    (OPT, '{"a":' + "1" * 16 + "}", True),
    (OPT, '{"a":' + "1" * 17 + "}", False),  # integral part <= 16 digits
    ({"type": "number"}, "0." + "5" * 16, True),
    ({"type": "number"}, "0." + "5" * 17, False),  # fraction <= 16 digits
    ({"type": "number"}, "1e" + "9" * 17, False),
    ({"type": "number"}, "01", False),
    ({"type": "integer", "minimum": 0, "maximum": 150}, "151", False),
    ({"type": "number", "minimum": 0, "maximum": 1}, "1.5", False),  # beyond llama.cpp: enforced
    (OPT, '{\n\n\t\t"a" : 1 ,  "b":"x"}', False),  # two spaces after the comma
    (OPT, '{\n\n\t\t"a" : 1 , "b":"x"}', True),  # one space, or 1-2 newlines + <=20 blanks
    (OPT, '{\n\n\n"a":1}', False),
    (OPT, '{\n' + " " * 20 + '"a":1}', True),
    (OPT, '{\n' + " " * 21 + '"a":1}', False),
    (OPT, '{"a":1} ', False),  # nothing after the root value: EOS
    ({}, '{"k":[1,{"x":null}]}', True),
    ({}, "[1]", False),  # {} is any object, not any value
    ({"description": "anything"}, "[1]", True),
    ("json", '{"k":1}', True),
    ("json", "[1]", False),  # format "json": the root is an object
    ({"type": "string"}, '"a\\/b"', False),  # no \/ escape
    ({"type": "string"}, '"a\\u00e9\\n"', True),
    ({"type": "string", "format": "date-time"}, '"2024-02-29T12:00:00Z"', True),
    ({"type": "string", "format": "date-time"}, '"2024-02-29T12:00:00"', False),  # zone required
    ({"type": "string", "format": "uuid"}, '"123e4567-e89b-12d3-a456-426614174000"', True),
    ({"type": "string", "maxLength": 2}, '"abc"', False),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "[1, 2, 3]", False),
    ({"prefixItems": [{"type": "integer"}, {"type": "string"}]}, '[1, "a"]', True),
    ({"enum": ["a", {"x": [1]}]}, '{"x":[1]}', True),
    ({"enum": ["a", {"x": [1]}]}, '{"x": [1]}', False),  # enum/const: exact JSON literals
    ({"$defs": {"N": {"type": "object", "required": ["next"], "properties": {
        "next": {"anyOf": [{"$ref": "#/$defs/N"}, {"type": "null"}]}}}}, "$ref": "#/$defs/N"},
     '{"next":{"next":null}}', True),
    # Lists of $ref objects and optional $refs, as Pydantic writes them (test_structured_demo
    # leaves Order and Team to scripts/structured_validity.py for time)
    (Order.model_json_schema(), '{"order_id": 7, "items": [{"name": "pizza", "quantity": 2, '
                                '"price": 9.5}, {"name": "cola", "quantity": 1, "price": 2}]}',
     True),
    (Order.model_json_schema(), '{"order_id": 7, "items": [{"name": "pizza", "quantity": 2}]}',
     False),  # an item's required key missing
    (Team.model_json_schema(), '{"team": "a", "members": [{"name": "Al", "age": 30, '
                               '"email": null}], "lead": null}', True),
    (Team.model_json_schema(), '{"team": "a", "members": [], "lead": {"name": "Al"}}', False),
]


@pytest.mark.parametrize("fmt,text,ok", SEMANTICS, ids=[f"{i}" for i in range(len(SEMANTICS))])
def test_grammar_follows_ollamas_semantics(lltok, fmt, text, ok):
    assert accepts(lltok, fmt, text) is ok


def test_a_large_enum_is_one_terminal(client):
    """20,000 values as parser alternatives would pass llguidance's 2000-items row limit and end
    the answer empty; as one terminal the lexer picks among them."""
    schema = {"type": "object", "additionalProperties": False, "required": ["v"],
              "properties": {"v": {"enum": [f"v{i}" for i in range(20000)]}}}
    text, final = chat(client, schema, temperature=1.0, seed=1)
    jsonschema.validate(json.loads(text), schema)
    assert final["done_reason"] == "stop"


def test_integer_ranges_are_exact():
    from bridge.engine.json_numbers import int_range, number_range

    for lo, hi in [(0, 0), (-9, 9), (7, 1234), (-1234, -7), (95, 105), (-1, 0), (10, 99)]:
        rx = re.compile(int_range(lo, hi))
        assert [n for n in range(-1300, 1300) if rx.fullmatch(str(n))] == list(range(lo, hi + 1))
    rx = re.compile(number_range(0, True, 10, True))
    assert [s for s in ["0", "0.0", "0.01", "9.99", "10", "10.0", "-1"] if rx.fullmatch(s)] == [
        "0.01", "9.99"]


_KEYS = ["type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum",
         "const", "anyOf", "allOf", "$ref", "$defs", "minimum", "exclusiveMaximum", "maxLength",
         "pattern", "format", "minItems", "maxItems", "uniqueItems", "description"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                     st.sampled_from(["string", "number", "integer", "object", "array", "null",
                                      "#", "#/$defs/a", "date", "uuid", "^a+$", "(?<=a)"]),
                     st.text(max_size=4))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=3)), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5))
def test_any_schema_compiles_or_is_a_400(schema):
    """The converter is new code on untrusted input: nothing but a BridgeError (a 4xx) escapes."""
    from bridge.engine.structured import grammar_for
    from bridge.errors import BridgeError

    try:
        grammar_for(schema)
    except BridgeError as exc:
        assert exc.status == 400


def test_an_allof_of_enums_is_their_intersection_at_any_repetition():
    """`allOf` members' enums intersect (1 and True kept apart, as JSON does); one enum repeated
    by `$ref` 10,000 times costs one pass (membership tests made this hours of CPU)."""
    from bridge.engine.json_grammar import lark_for

    ref = {"$defs": {"e": {"enum": list(range(1000))}}, "type": "object",
           "properties": {"a": {"allOf": [{"$ref": "#/$defs/e"}] * 10_000}}, "required": ["a"]}
    grammar = lark_for(ref)
    assert '"999"' in grammar and '"1000"' not in grammar
    two = {"allOf": [{"enum": [1, True, "x", {"k": [1, 2]}]}, {"enum": [{"k": [1, 2]}, True, 2]}]}
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', lark_for(two))
    assert "true" in literals and "1" not in literals and "x" not in literals


def test_the_grammar_matcher_is_made_on_the_request_thread(tiny_model_dir):
    """`prepare` (LocalBackend.tokenize, request thread) builds the matcher; the engine
    thread's call takes it instead of building another (a large enum's took 0.25 s there)."""
    from bridge.engine.models import load_text_tokenizer
    from bridge.engine.structured import TokenizerTables
    from bridge.serving.output import plan_output

    tokenizer = load_text_tokenizer(str(tiny_model_dir))
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"]}
    factory = plan_output(None, [], None, schema).factory(TokenizerTables())
    factory.prepare(tokenizer)
    prepared = factory._prepared[1]
    assert factory(tokenizer).constraint is prepared
    assert factory(tokenizer).constraint is not prepared  # used once; the next job makes its own
    other = load_text_tokenizer(str(tiny_model_dir))  # another object: not handed the matcher
    factory.prepare(tokenizer)
    second = factory._prepared[1]
    assert factory(other).constraint is not second


def test_the_tables_leave_the_engines_tokenizer_as_it_was(tiny_model_dir):
    """llguidance needs padding and truncation off: a tokenizer with them on is copied (its own
    settings stay); one with them off (the usual case) is read as it is, without a copy."""
    from bridge.engine.models import load_text_tokenizer
    from bridge.engine.structured import _ll_tokenizer

    tokenizer = load_text_tokenizer(str(tiny_model_dir))
    backend = tokenizer._tokenizer.backend_tokenizer
    assert backend.padding is None and backend.truncation is None
    plain = _ll_tokenizer(tokenizer)
    backend.enable_padding(length=16)
    backend.enable_truncation(max_length=8)
    padded = _ll_tokenizer(tokenizer)
    assert backend.padding["length"] == 16 and backend.truncation["max_length"] == 8
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    assert plain.tokenize_str("hello world") == padded.tokenize_str("hello world") == ids
