"""Structured output on the offline demo model (SmolLM2-135M) through a real server and real
clients.

Each Pydantic model of tests/structured_models.py goes through ollama-python's `chat` and
`generate` (`format`) and the openai SDK's `chat.completions.parse` (`response_format`), at
default sampling (no temperature override; fixed seeds so a run is reproducible). Pydantic's
schemas carry no `additionalProperties`: under Ollama's semantics no extra key may appear, which
before this grammar let SmolLM2 add keys until `num_predict` ran out.
"""

from __future__ import annotations

import json
import re

import jsonschema
import ollama
import openai
import pytest

from .conftest import start_server, stop_server, write_mappings
from .structured_models import SCHEMA_SET, closed, messages

MODEL = "smollm2:135m"
SEED = 1
SEEDS = (1, 2, 3)
NUM_PREDICT = 400


@pytest.fixture(scope="module")
def smol_url(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("structured-demo")
    mappings = write_mappings(root / "m.yaml", {MODEL: {"mlx": str(smollm2_dir), "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none", "--no-demo"])
    yield url
    stop_server(proc)


def check(text: str, schema: dict) -> dict:
    """Valid JSON, valid against the schema, and no key the schema does not name."""
    value = json.loads(text)
    jsonschema.validate(value, closed(schema))
    return value


def ask(url: str, model, question: str, via: str, seed: int) -> tuple[str, str, int]:
    """(text, done/finish reason, generated tokens) from one real client."""
    schema, msgs = model.model_json_schema(), messages(model, question)
    options = {"seed": seed, "num_predict": NUM_PREDICT}
    if via == "chat":
        out = ollama.Client(host=url).chat(model=MODEL, messages=msgs, format=schema,
                                           options=options)
        return out.message.content, out.done_reason, out.eval_count
    if via == "generate":
        out = ollama.Client(host=url).generate(model=MODEL, prompt=msgs[0]["content"],
                                               format=schema, options=options)
        return out.response, out.done_reason, out.eval_count
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    try:
        done = client.chat.completions.parse(model=MODEL, messages=msgs, response_format=model,
                                             seed=seed, max_tokens=NUM_PREDICT)
    except openai.LengthFinishReasonError as exc:  # the SDK's answer to a cut value
        cut = exc.completion
        return cut.choices[0].message.content, "length", cut.usage.completion_tokens
    choice = done.choices[0]
    assert isinstance(choice.message.parsed, model)
    return choice.message.content, choice.finish_reason, done.usage.completion_tokens


# Each schema through one client, the clients taken in turn: the grammar is the server's, the
# clients differ only in how the schema travels. The full 8 x 3 matrix took 6 minutes of a 2-core
# box; scripts/structured_validity.py measures it all. Order (openai-parse: its first seed runs
# the whole num_predict, 42 s) and Team (chat, 10 s) took half this module's time for no path the
# other six do not take (nested objects and lists: Customer, Book, Meeting), so only the script
# runs those two.
VIAS = ("chat", "generate", "openai-parse")
LEFT_TO_THE_SCRIPT = {"Order", "Team"}
CASES = [(model, question, VIAS[i % len(VIAS)]) for i, (model, question) in enumerate(SCHEMA_SET)
         if model.__name__ not in LEFT_TO_THE_SCRIPT]


@pytest.mark.slow
@pytest.mark.parametrize("model,question,via", CASES,
                         ids=[f"{m.__name__}-{via}" for m, _, via in CASES])
def test_schema_set_validates(smol_url, model, question, via):
    """Every value the model finishes is valid and closed. The grammar cannot end a string or a
    list the model never ends (nor can Ollama's): such a run stops at num_predict, marked
    "length", and the next seed is tried; one of three must finish."""
    finished = 0
    for seed in SEEDS:
        text, reason, tokens = ask(smol_url, model, question, via, seed)
        print(f"{model.__name__} via {via} seed {seed}: {reason} {text!r}")
        if reason == "length":
            assert tokens == NUM_PREDICT and text.startswith("{")
            continue
        assert reason == "stop"
        check(text, model.model_json_schema())
        finished += 1
        break
    assert finished, "no seed finished within num_predict"


INTEGER_ONLY = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                "additionalProperties": False}
PI = {"type": "object", "properties": {"pi": {"type": "number"}}, "required": ["pi"],
      "additionalProperties": False}


@pytest.mark.parametrize("schema,question", [
    (INTEGER_ONLY, f"The account id is {'1234567890' * 6}. Give the account id."),
    (PI, "Write pi with its first one hundred decimal digits."),
], ids=["integer", "fraction"])
def test_numbers_stop_at_16_digits(smol_url, schema, question):
    """llama.cpp's number rules: at most 16 integer and 16 fraction digits, so a model asked for
    a hundred digits ends the number and the object instead of running into num_predict."""
    out = ollama.Client(host=smol_url).chat(
        model=MODEL, messages=[{"role": "user", "content": question + " Answer in JSON."}],
        format=schema, options={"seed": SEED, "num_predict": NUM_PREDICT})
    print(repr(out.message.content))
    value = check(out.message.content, schema)
    number = re.search(r"-?([0-9]+)(?:\.([0-9]+))?", out.message.content.split(":", 1)[1])
    assert number and len(number.group(1)) <= 16 and len(number.group(2) or "") <= 16
    assert out.done_reason == "stop" and isinstance(next(iter(value.values())), (int, float))


def test_tight_num_predict_cuts_the_json_with_done_reason_length(smol_url):
    """As Ollama: the limit wins over the grammar; the partial text comes back, marked "length"."""
    model, question = SCHEMA_SET[1]  # Customer: nested, longer than 8 tokens
    schema, msgs = model.model_json_schema(), messages(model, question)
    client = ollama.Client(host=smol_url)
    longer = client.chat(model=MODEL, messages=msgs, format=schema,
                         options={"seed": SEED, "temperature": 0, "num_predict": 40})
    cut = client.chat(model=MODEL, messages=msgs, format=schema,
                      options={"seed": SEED, "temperature": 0, "num_predict": 8})
    assert cut.done_reason == "length" and cut.eval_count == 8
    assert (longer.message.content.startswith(cut.message.content)
            and cut.message.content.startswith("{"))
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.message.content)
    gen = client.generate(model=MODEL, prompt=msgs[0]["content"], format=schema,
                          options={"num_predict": 8})
    assert gen.done_reason == "length" and gen.eval_count == 8

    oai = openai.OpenAI(base_url=smol_url + "/v1", api_key="unused", max_retries=0)
    raw = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, response_format={
        "type": "json_schema", "json_schema": {"name": "customer", "schema": schema}})
    assert raw.choices[0].finish_reason == "length" and raw.usage.completion_tokens == 8
    with pytest.raises(openai.LengthFinishReasonError):  # the SDK's own answer to a cut value
        oai.chat.completions.parse(model=MODEL, messages=msgs, response_format=model, max_tokens=8)
