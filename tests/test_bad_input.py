"""Bad input on the native API: exact statuses and Ollama's `{"error": ...}` texts, never a 5xx.

The matrix runs against the shared in-process app (`app`/`client`); the last tests check that the
app, and a real `mlx-bridge serve` process hit over raw sockets, still serve normally afterwards.
"""

from __future__ import annotations

import json
import random
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from bridge.wire.names import InvalidModelName, ModelName

G, C, S, D = "/api/generate", "/api/chat", "/api/show", "/api/delete"
OK_GEN = {"model": "tiny", "prompt": "hi", "stream": False}
OK_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False}
FAST = {"num_predict": 2}
MISSING_BODY = "missing request body"


def body_for(path: str, **fields: Any) -> dict[str, Any]:
    """A valid generate/chat body with some fields replaced (None removes a field)."""
    base = dict(OK_GEN if path == G else OK_CHAT)
    base["options"] = dict(FAST)
    for k, v in fields.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


def send(client, method: str, path: str, body: Any = None,
         content_type: str | None = "application/json"):
    """`body`: bytes/str are sent as is, anything else JSON-encoded; None sends no body."""
    if body is None or isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = json.dumps(body).encode("utf-8")
    kwargs: dict[str, Any] = {"method": method, "data": data}
    if content_type is not None:
        kwargs["content_type"] = content_type
    return client.open(path, **kwargs)


def error_of(resp) -> str:
    """The response's error text; asserts the `{"error": "<non-empty str>"}` JSON shape."""
    assert resp.status_code < 500, (resp.status_code, resp.get_data()[:500])
    assert resp.mimetype == "application/json", (resp.mimetype, resp.get_data()[:200])
    payload = json.loads(resp.get_data())
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    assert isinstance(payload["error"], str) and payload["error"].strip(), payload
    return payload["error"]


def case(method: str, path: str, body: Any, status: int, text: str | None = None, *,
         contains: str | None = None, content_type: str | None = "application/json", id: str):
    return pytest.param(method, path, body, status, text, contains, content_type, id=id)


def gen_and_chat(body: Any, status: int, text_for=None, *, contains: str | None = None, id: str):
    """The same bad body on generate and chat; `text_for(struct)` gives the exact text."""
    out = []
    for path, struct in ((G, "GenerateRequest"), (C, "ChatRequest")):
        b = body(path) if callable(body) else body
        text = text_for(struct) if text_for else None
        out.append(case("POST", path, b, status, text, contains=contains, id=f"{path[5:]}-{id}"))
    return out


def test_a_5000_digit_number_in_an_unknown_field_is_ignored_as_go_does(client):
    """Go skips an unknown field's number whatever its size; Python's int() refuses one over
    4,300 digits, which made it a 400 quoting Python's advice."""
    body = b'{"model":"tiny","prompt":"hi","stream":false,"options":{"num_predict":1},"n":' + (
        b"9" * 5000 + b"}")
    resp = client.post(G, data=body, content_type="application/json")
    assert resp.status_code == 200, resp.get_data()[:300]
    known = b'{"model":"tiny","prompt":"hi","options":{"num_predict":' + b"9" * 5000 + b"}}"
    resp = client.post(G, data=known, content_type="application/json")
    assert resp.status_code == 400 and "num_predict" in error_of(resp), error_of(resp)
    assert "sys.set_int_max_str_digits" not in error_of(resp)
    bom = client.post(G, data="\ufeff{}".encode(), content_type="application/json")
    assert (bom.status_code, error_of(bom)) == (
        400, "invalid character 'ï' looking for beginning of value")


def every_post(body: Any, status: int, text: str | None = None, *, content_type="application/json",
               contains: str | None = None, id: str):
    return [case(m, p, body, status, text, contains=contains, content_type=content_type,
                 id=f"{p[5:]}-{id}")
            for m, p in (("POST", G), ("POST", C), ("POST", S), ("DELETE", D))]


def option_case(options: dict[str, Any], text: str | None, *, id: str):
    return gen_and_chat(lambda p: body_for(p, options={**FAST, **options}), 400,
                        (lambda _s: text) if text else None, id=id)


def nan_bodies(literal: str) -> list[tuple[str, bytes]]:
    return [("option",
             f'{{"model":"tiny","prompt":"hi","options":{{"temperature":{literal}}}}}'.encode()),
            ("keep-alive", f'{{"model":"tiny","prompt":"hi","keep_alive":{literal}}}'.encode())]


CASES = [
    # --- the body itself ---
    *every_post(b"", 400, MISSING_BODY, id="empty"),
    *every_post(b"", 400, MISSING_BODY, content_type=None, id="empty-no-content-type"),
    *every_post(None, 400, MISSING_BODY, content_type=None, id="no-body-at-all"),
    *every_post(b" \n\t\r\n ", 400, MISSING_BODY, id="whitespace-only"),
    # Go decoder wording (spec §5)
    *every_post(b"{", 400, "unexpected end of JSON input", id="truncated-brace"),
    *every_post(b"nope", 400, "invalid character 'n' looking for beginning of value",
                id="bare-word"),
    *every_post(b'{"model": }', 400, "invalid character '}' looking for beginning of value",
                id="missing-value"),
    *every_post(b'{"model": "tiny", "prompt": "hi', 400, "unexpected end of JSON input",
                id="truncated-string"),
    *every_post(b"{'model': 'tiny'}", 400,
                "invalid character '\\'' looking for beginning of object key string",
                id="single-quotes"),
    *every_post(b'{"model":"tiny",}', 400,
                "invalid character '}' looking for beginning of object key string",
                id="trailing-comma"),
    *every_post(b'{"model":"tiny"} {}', 400, "invalid character '{' after top-level value",
                id="trailing-data"),
    *every_post(b'{"model":"tiny" "prompt":"x"}', 400, id="missing-comma"),
    *every_post(b"[]", 400, contains="cannot unmarshal array into Go value of type api.",
                id="array"),
    *every_post(b'"str"', 400, contains="cannot unmarshal string into Go value", id="string"),
    *every_post(b"3", 400, contains="cannot unmarshal number into Go value", id="number"),
    *every_post(b"null", 400, contains="cannot unmarshal null into Go value", id="null"),
    *every_post(b"true", 400, id="bool"),
    *every_post(b'{"model":"tiny","prompt":"\xff\xfe\xfd"}', 400, id="invalid-utf8"),
    *every_post(b"\xc3\x28", 400, id="invalid-utf8-only"),
    *every_post(b'{"model":"tiny","prompt":"\xed\xa0\x80"}', 400, id="utf8-encoded-surrogate"),
    *every_post(b"[" * 100_000 + b"]" * 100_000, 400, id="deep-array-nesting"),
    *every_post(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, id="deep-object-nesting"),
    *every_post(b'{"model":"tiny","prompt":"a\x00b"}', 400, id="raw-control-char"),
    *[c for lit, text in (("NaN", "invalid character 'N' looking for beginning of value"),
                          ("Infinity", "invalid character 'I' looking for beginning of value"),
                          ("-Infinity", "invalid character 'I' in numeric literal"))
      for where, b in nan_bodies(lit) for c in every_post(b, 400, text, id=f"{lit}-in-{where}")],
    *every_post(b'{"model":"tiny","keep_alive":1e400}', 400, contains="1e400", id="float-overflow"),
    # --- wrongly typed fields ---
    *gen_and_chat(lambda p: body_for(p, stream="yes"), 400,
                  lambda s: f"json: cannot unmarshal string into Go struct field {s}.stream of "
                            "type bool",
                  id="stream-yes"),
    *gen_and_chat(lambda p: body_for(p, stream=1), 400,
                  lambda s: f"json: cannot unmarshal number into Go struct field {s}.stream of "
                            "type bool",
                  id="stream-1"),
    *gen_and_chat(lambda p: body_for(p, model=3), 400,
                  lambda s: f"json: cannot unmarshal number into Go struct field {s}.model of type "
                            "string",
                  id="model-number"),
    *gen_and_chat(lambda p: body_for(p, model=["tiny"]), 400, id="model-list"),
    *gen_and_chat(lambda p: body_for(p, model={"name": "tiny"}), 400, id="model-object"),
    case("POST", S, {"model": 3}, 400, contains="cannot unmarshal number", id="show-model-number"),
    case("POST", S, {"name": ["tiny"]}, 400, contains="cannot unmarshal array",
         id="show-name-list"),
    case("DELETE", D, {"model": 3}, 400, contains="cannot unmarshal number",
         id="delete-model-number"),
    case("POST", G, body_for(G, prompt=["a"]), 400,
         "json: cannot unmarshal array into Go struct field GenerateRequest.prompt of type string",
         id="generate-prompt-list"),
    case("POST", G, body_for(G, prompt=5), 400, id="generate-prompt-number"),
    case("POST", G, body_for(G, system=True), 400, id="generate-system-bool"),
    case("POST", G, body_for(G, context="1,2"), 400, id="generate-context-string"),
    case("POST", G, body_for(G, context=[1.5]), 400, id="generate-context-float"),
    case("POST", G, body_for(G, context=[2**70]), 400, id="generate-context-overflow"),
    case("POST", G, body_for(G, images="abc"), 400, id="generate-images-string"),
    case("POST", G, body_for(G, raw="yes"), 400, id="generate-raw-string"),
    case("POST", C, body_for(C, messages={"role": "user", "content": "hi"}), 400,
         "json: cannot unmarshal object into Go struct field ChatRequest.messages of type "
         "[]api.Message",
         id="chat-messages-object"),
    case("POST", C, body_for(C, messages="hi"), 400,
         "json: cannot unmarshal string into Go struct field ChatRequest.messages of type "
         "[]api.Message",
         id="chat-messages-string"),
    case("POST", C, body_for(C, messages=[1, 2]), 400, id="chat-messages-numbers"),
    case("POST", C, body_for(C, messages=["hi"]), 400, id="chat-messages-strings"),
    case("POST", C, body_for(C, messages=[None]), 400, id="chat-messages-null-item"),
    case("POST", C, body_for(C, messages=[[{"role": "user", "content": "hi"}]]), 400,
         id="chat-messages-nested-list"),
    case("POST", C, body_for(C, messages=[{"role": "wizard", "content": "hi"}]), 400,
         contains="role", id="chat-role-invalid"),
    case("POST", C, body_for(C, messages=[{"content": "hi"}]), 400, contains="role",
         id="chat-role-missing"),
    case("POST", C, body_for(C, messages=[{"role": 1, "content": "hi"}]), 400,
         id="chat-role-number"),
    case("POST", C, body_for(C, messages=[{"role": "user", "content": 42}]), 400,
         "json: cannot unmarshal number into Go struct field Message.content of type string",
         id="chat-content-number"),
    case("POST", C, body_for(C, messages=[{"role": "user", "content": ["hi"]}]), 400,
         id="chat-content-list"),
    case("POST", C, body_for(C, messages=[{"role": "user", "content": "hi", "images": "x"}]), 400,
         id="chat-images-string"),
    case("POST", C, body_for(C, messages=[{"role": "assistant", "content": "", "tool_calls": [1]}]),
         400,
         id="chat-tool-calls-number"),
    case("POST", C, body_for(C, tools="x"), 400, id="chat-tools-string"),
    case("POST", C, body_for(C, tools=[1]), 400, id="chat-tools-number"),
    # --- options ---
    *gen_and_chat(lambda p: body_for(p, options=[1]), 400, id="options-list"),
    *gen_and_chat(lambda p: body_for(p, options="fast"), 400, id="options-string"),
    *gen_and_chat(lambda p: body_for(p, options=3), 400, id="options-number"),
    *option_case({"temperature": "hot"}, 'option "temperature" must be of type float32',
                 id="temperature-hot"),
    *option_case({"temperature": True}, 'option "temperature" must be of type float32',
                 id="temperature-bool"),
    *option_case({"num_predict": 1.5}, 'option "num_predict" must be of type integer',
                 id="num-predict-fraction"),
    *option_case({"num_predict": "3"}, 'option "num_predict" must be of type integer',
                 id="num-predict-string"),
    *option_case({"top_k": [40]}, 'option "top_k" must be of type integer', id="top-k-list"),
    *option_case({"stop": [1, 2]}, None, id="stop-numbers"),
    *option_case({"stop": {"a": 1}}, None, id="stop-object"),
    *option_case({"use_mmap": "yes"}, None, id="use-mmap-string"),
    # --- keep_alive, think, format, top_logprobs, raw ---
    *gen_and_chat(lambda p: body_for(p, keep_alive="300"), 400,
                  lambda _s: 'time: missing unit in duration "300"', id="keep-alive-no-unit"),
    *gen_and_chat(lambda p: body_for(p, keep_alive="5 minutes"), 400, contains="time: ",
                  id="keep-alive-words"),
    *gen_and_chat(lambda p: body_for(p, keep_alive="1d"), 400, contains="unknown unit",
                  id="keep-alive-days"),
    *gen_and_chat(lambda p: body_for(p, keep_alive=True), 400, id="keep-alive-true"),
    *gen_and_chat(lambda p: body_for(p, keep_alive=[5]), 400, id="keep-alive-list"),
    *gen_and_chat(lambda p: body_for(p, think="x"), 400,
                  lambda _s: 'invalid think value: "x" (must be "high", "medium", "low", "max", '
                             'true, or false)',
                  id="think-x"),
    *gen_and_chat(lambda p: body_for(p, format="yaml"), 400,
                  lambda _s: ('invalid format: "yaml"; expected "json" or a valid JSON Schema '
                              'object'),
                  id="format-yaml"),
    *gen_and_chat(lambda p: body_for(p, format=3), 400, contains="invalid format",
                  id="format-number"),
    *gen_and_chat(lambda p: body_for(p, top_logprobs=21), 400,
                  lambda _s: "top_logprobs must be between 0 and 20", id="top-logprobs-21"),
    *gen_and_chat(lambda p: body_for(p, top_logprobs=-1), 400,
                  lambda _s: "top_logprobs must be between 0 and 20", id="top-logprobs-negative"),
    *gen_and_chat(lambda p: body_for(p, top_logprobs="3"), 400, id="top-logprobs-string"),
    *gen_and_chat(lambda p: body_for(p, truncate="no"), 400, id="truncate-string"),
    *gen_and_chat(lambda p: body_for(p, logprobs=1), 400, id="logprobs-number"),
    *[case("POST", G, body_for(G, raw=True, **extra), 400,
           "raw mode does not support template, system, or context", id=f"generate-raw-with-{k}")
      for k, extra in (("system", {"system": "be brief"}), ("template",
                                                            {"template": "{{ .Prompt }}"}),
                       ("context", {"context": [1, 2]}))],
    # --- models that do not exist ---
    case("POST", G, body_for(G, model="nope"), 404, "model 'nope' not found",
         id="generate-unknown"),
    case("POST", C, body_for(C, model="nope"), 404, "model 'nope' not found", id="chat-unknown"),
    case("POST", G, {"model": "Nope:Latest", "prompt": "x"}, 404, "model 'Nope:Latest' not found",
         id="generate-unknown-quoted-as-typed"),
    case("POST", G, body_for(G, model=None), 404, "model '' not found",
         id="generate-missing-model"),
    case("POST", G, body_for(G, model=""), 404, "model '' not found", id="generate-empty-model"),
    case("POST", G, {"prompt": "x", "model": None}, 404, "model '' not found",
         id="generate-null-model"),
    case("POST", C, body_for(C, model=None), 400, "model is required", id="chat-missing-model"),
    case("POST", C, {"messages": [], "model": ""}, 400, "model is required", id="chat-empty-model"),
    case("POST", S, {}, 400, "model is required", id="show-missing"),
    case("POST", S, {"model": "", "name": ""}, 400, "model is required", id="show-empty"),
    case("POST", S, {"model": "nope"}, 404, "model 'nope:latest' not found", id="show-unknown"),
    case("POST", S, {"name": "nope"}, 404, "model 'nope:latest' not found",
         id="show-unknown-by-name"),
    case("POST", S, {"model": "user/nope:7b"}, 404, "model 'user/nope:7b' not found",
         id="show-unknown-namespaced"),
    case("DELETE", D, {"model": "nope"}, 404, "model 'nope' not found", id="delete-unknown"),
    case("DELETE", D, {"name": "nope:1b"}, 404, "model 'nope:1b' not found",
         id="delete-unknown-by-name"),
    case("DELETE", D, {"model": "../../etc"}, 400, 'name "../../etc" is invalid',
         id="delete-invalid-name"),
    case("DELETE", D, {"model": "a b"}, 400, 'name "a b" is invalid', id="delete-invalid-space"),
    case("DELETE", D, {}, 400, 'name "" is invalid', id="delete-missing"),
    # --- mapped, but the weights were never downloaded ---
    case("POST", G, body_for(G, model="absent:7b"), 404,
         "model 'absent:7b' not found, try pulling it first",
         id="generate-absent"),
    case("POST", C, body_for(C, model="absent:7b"), 404,
         "model 'absent:7b' not found, try pulling it first",
         id="chat-absent"),
    case("POST", G, {"model": "ABSENT:7B"}, 404,
         "model 'ABSENT:7B' not found, try pulling it first",
         id="generate-absent-load"),
    case("POST", C, {"model": "absent:7b", "messages": []}, 404,
         "model 'absent:7b' not found, try pulling it first", id="chat-absent-load"),
    case("POST", S, {"model": "absent:7b"}, 404, "model 'absent:7b' not found", id="show-absent"),
    case("DELETE", D, {"model": "absent:7b"}, 404, "model 'absent:7b' not found",
         id="delete-absent"),
]

HOSTILE_NAMES = ["../../etc", "/etc/passwd", "a b", "x" * 300, "..", "~/.ssh/id_rsa",
                 "..\\..\\windows", "tiny/../../../etc/passwd", "file:///etc/passwd",
                 "http://evil.example/ns/x", "\x00", "tiny\n", "etc/passwd", "a:b:c", "@sha256:00",
                 "tiny:", ":latest"]


@pytest.mark.parametrize(("method", "path", "body", "status", "text", "contains", "content_type"),
                         CASES)
def test_bad_input(client, method, path, body, status, text, contains, content_type):
    resp = send(client, method, path, body, content_type)
    error = error_of(resp)
    assert resp.status_code == status, (resp.status_code, error)
    if text is not None:
        assert error == text
    if contains is not None:
        assert contains in error, error


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[f"name{i}" for i in range(len(HOSTILE_NAMES))])
@pytest.mark.parametrize(("method", "path"), [("POST", G), ("POST", C), ("POST", S), ("DELETE", D)],
                         ids=["generate", "chat", "show", "delete"])
def test_hostile_model_names_are_never_paths(client, method, path, name):
    body = {"model": name, "prompt": "hi", "messages": [{"role": "user", "content": "hi"}],
            "stream": False}
    resp = send(client, method, path, body)
    error = error_of(resp)
    assert resp.status_code in (400, 404), (resp.status_code, error)
    allowed = {f"model '{name}' not found", "invalid model name", f'name "{name}" is invalid'}
    try:
        display = ModelName.parse(name).display  # a valid (if odd) name: show answers with it
    except InvalidModelName:
        display = None
    if display:
        allowed.add(f"model '{display}' not found")
    assert error in allowed, error
    # nothing of the file system leaks: no path was looked up, no file was read
    leftover = error.replace(name, "").replace(display or name, "")
    assert "/etc" not in leftover and "root:" not in error and "No such file" not in error


@pytest.mark.parametrize("path", [G, C, S, D])
def test_lone_surrogate_escapes_are_replaced_not_500(client, path):
    """`\\ud800` is valid JSON but not encodable: Go turns it into U+FFFD; so must we."""
    method = "DELETE" if path == D else "POST"
    resp = send(client, method, path, b'{"model":"no\\ud800pe","prompt":"x","messages":[]}')
    error = error_of(resp)
    assert resp.status_code in (400, 404)
    assert "\ufffd" in error or error == "invalid model name" or "is invalid" in error


@pytest.mark.parametrize("path", [G, C])
def test_lone_surrogate_in_text_is_served(client, path):
    if path == G:
        raw = (b'{"model":"tiny","prompt":"a\\udfffb \\ud83d\\ude00","stream":false,'
               b'"options":{"num_predict":2}}')
    else:
        raw = (b'{"model":"tiny","stream":false,"options":{"num_predict":2},'
               b'"messages":[{"role":"user","content":"\\ud800 hi"}]}')
    resp = send(client, "POST", path, raw)
    assert resp.status_code == 200, resp.get_data()[:300]
    assert resp.get_json()["done"] is True


def test_unknown_path_is_plain_404(client):
    for method in ("GET", "POST", "DELETE"):
        resp = client.open("/api/nope", method=method)
        assert resp.status_code == 404
        assert resp.get_data(as_text=True) == "404 page not found"
        assert resp.mimetype == "text/plain"


def test_an_unknown_v1_path_is_openais_not_found_error(client):
    resp = client.post("/v1/nope", json={})
    assert resp.status_code == 404
    assert resp.get_json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(("method", "path"), [("GET", G), ("GET", C), ("PUT", G), ("GET", S),
                                              ("GET", D),
                                              ("POST", D), ("DELETE", G), ("POST", "/api/tags")])
def test_wrong_method_is_405(client, method, path):
    resp = client.open(path, method=method)
    assert resp.status_code == 405, resp.get_data()[:200]


# --- things that must be accepted ------------------------------------------------------------

ACCEPTED = [
    pytest.param(G, {"options": {**FAST, "mirostat": 2, "tfs_z": 1.0, "numa": False,
                                 "unknown_key": [1, {}],
                                 "temperature": None, "stop": None, "penalize_newline": True}},
                 id="generate-unknown-and-null-options"),
    pytest.param(C, {"options": {**FAST, "mirostat_eta": 0.1, "low_vram": None, "seed": None}},
                 id="chat-unknown-and-null-options"),
    pytest.param(G, {"options": {"num_predict": 3.0, "top_k": 40.0, "seed": 7.0}},
                 id="ints-as-floats"),
    pytest.param(C, {"options": {"num_predict": 3.0, "repeat_last_n": 64.0}},
                 id="chat-ints-as-floats"),
    pytest.param(G, {"width": 3, "height": 4, "steps": 2, "whatever": {"a": [1]}, "suffix": None},
                 id="generate-unknown-top-level"),
    pytest.param(C, {"extra": True, "tools": None, "format": ""}, id="chat-unknown-top-level"),
    pytest.param(G, {"format": None, "keep_alive": "5m", "think": None}, id="nulls-are-unset"),
    pytest.param(G, {"keep_alive": 300.5, "format": "json"}, id="keep-alive-float"),
    pytest.param(C, {"keep_alive": "-1m", "options": {"num_predict": 2, "stop": "\n\n"}},
                 id="stop-string"),
    pytest.param(C, {"messages": [{"role": "USER", "content": "hi", "images": None,
                                   "tool_call_id": None}]},
                 id="role-case-and-null-fields"),
    # the edges of each option's range (values past them are 400s, see OUT_OF_RANGE); at these
    # mlx-lm used to raise (and poison the engine's random state), so they are served with care
    pytest.param(G, {"options": {**FAST, "min_p": 1, "temperature": 0.9}}, id="min-p-1"),
    pytest.param(C, {"options": {**FAST, "min_p": 0, "top_p": 0, "top_k": 0, "temperature": 0.9}},
                 id="zeros-mean-off"),
    pytest.param(G, {"options": {**FAST, "repeat_penalty": 0, "repeat_last_n": -1}},
                 id="repeat-penalty-0"),
    pytest.param(G, {"options": {**FAST, "temperature": 3.4e38, "top_p": 1}}, id="float32-max"),
    pytest.param(G, {"options": {**FAST, "seed": 2**70}}, id="seed-beyond-uint64"),
    pytest.param(G, {"options": {**FAST, "seed": -(2**70)}}, id="seed-very-negative"),
    pytest.param(G, {"options": {"num_predict": 10**30, "num_ctx": 8}}, id="num-predict-huge"),
    pytest.param(G, {"options": {"num_predict": -2, "num_ctx": 8}}, id="num-predict-fill-context"),
    pytest.param(G, {"options": {**FAST, "num_ctx": 0}}, id="num-ctx-0-is-the-models"),
]

# Ollama passes these on to llama.cpp; they are clearly invalid, so the bridge answers 400.
OUT_OF_RANGE = [
    *option_case({"min_p": 2}, 'option "min_p" must be between 0 and 1', id="min-p-above-1"),
    *option_case({"min_p": -1}, 'option "min_p" must be between 0 and 1', id="min-p-negative"),
    *option_case({"repeat_penalty": -1}, 'option "repeat_penalty" must be at least 0',
                 id="repeat-penalty-negative"),
    *option_case({"num_ctx": -5}, 'option "num_ctx" must be at least 0', id="num-ctx-negative"),
    *option_case({"temperature": 1e39}, 'option "temperature" is out of range for float32',
                 id="float32-overflow"),
    *option_case({"top_p": -3}, 'option "top_p" must be between 0 and 1', id="top-p-negative"),
    *option_case({"top_p": 1.01}, 'option "top_p" must be between 0 and 1', id="top-p-above-1"),
    *option_case({"temperature": -0.1}, 'option "temperature" must be at least 0',
                 id="temperature-negative"),
    *option_case({"top_k": -1}, 'option "top_k" must be at least 0', id="top-k-negative"),
    *option_case({"num_predict": -3}, 'option "num_predict" must be at least -2',
                 id="num-predict-below-2"),
    *option_case({"repeat_last_n": -2}, 'option "repeat_last_n" must be at least -1',
                 id="repeat-last-n"),
    *option_case({"typical_p": 2}, 'option "typical_p" must be between 0 and 1', id="typical-p"),
    *option_case({"presence_penalty": -1e39},
                 'option "presence_penalty" is out of range for float32',
                 id="presence-penalty-overflow"),
]

TOOL_SHAPE = "invalid tool at index 0"
MALFORMED = [
    *[case("POST", C, body_for(C, tools=tools), 400, contains=TOOL_SHAPE, id=f"chat-tools-{i}")
      for i, tools in enumerate([[{"function": "x"}], [{"function": {"name": 5}}], [{"type": 3}],
                                 [{"function": {"name": "f", "parameters": "x"}}], [None], [[]]])],
    *[case("POST", C, body_for(C, messages=[{"role": "assistant", "content": "",
                                             "tool_calls": calls},
                                            {"role": "user", "content": "x"}]), 400,
           contains="invalid tool_calls in messages[0]", id=f"chat-tool-calls-{i}")
      for i, calls in enumerate([[{"function": {"name": "f", "arguments": "{}"}}],
                                 [{"function": {"name": 3, "arguments": {}}}], [{"function": None}],
                                 ["f"]])],
]
OPENAI_MALFORMED = [
    pytest.param({"temperature": -1}, 'option "temperature" must be at least 0', id="temperature"),
    pytest.param({"top_p": 2}, 'option "top_p" must be between 0 and 1', id="top-p"),
    pytest.param({"max_tokens": -1}, "invalid max_tokens: -1 (must be at least 0)",
                 id="max-tokens"),
    pytest.param({"messages": [{"role": "tool", "content": "x", "tool_call_id": [1]}]},
                 "invalid tool_call_id in message at index 0: expected a string",
                 id="tool-call-id-list"),
    pytest.param({"messages": [{"role": "tool", "content": "x", "name": 5}]},
                 "invalid name in message at index 0: expected a string", id="tool-name-number"),
    pytest.param({"messages": [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "1", "function": {"name": "f", "arguments": "[" * 5000}}]}]},
        "invalid tool call arguments in message at index 0", id="tool-arguments-too-deep"),
    pytest.param({"tools": [{"type": "function", "function": {"name": ["f"]}}]}, None, id="tools"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "text", "contains", "content_type"),
                         MALFORMED)
def test_malformed_tools(client, method, path, body, status, text, contains, content_type):
    resp = send(client, method, path, body, content_type)
    assert resp.status_code == 400 and contains in error_of(resp)


@pytest.mark.parametrize(("fields", "text"), OPENAI_MALFORMED)
def test_malformed_openai_bodies_get_the_openai_shape(client, fields, text):
    body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
            **fields}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.get_data()[:300]
    err = resp.get_json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if text is not None:
        assert err["message"] == text


@pytest.mark.parametrize(("method", "path", "body", "status", "text", "contains", "content_type"),
                         OUT_OF_RANGE)
def test_out_of_range_options(client, method, path, body, status, text, contains, content_type):
    resp = send(client, method, path, body, content_type)
    assert (resp.status_code, error_of(resp)) == (400, text)


@pytest.mark.parametrize(("path", "fields"), ACCEPTED)
def test_lenient_where_ollama_is(client, path, fields):
    resp = send(client, "POST", path, body_for(path, **fields))
    assert resp.status_code == 200, resp.get_data()[:500]
    out = resp.get_json()
    assert out["done"] is True
    assert out.get("eval_count", 0) <= 3


def test_num_ctx_is_honoured(client):
    """num_ctx sizes the context window: with truncate false, a longer prompt is a 400."""
    long_prompt = "hello world " * 50
    resp = send(client, "POST", G, body_for(G, prompt=long_prompt, truncate=False,
                                            options={**FAST, "num_ctx": 16}))
    assert error_of(resp) == "the input length exceeds the context length"
    assert resp.status_code == 400
    resp = send(client, "POST", G, body_for(G, prompt=long_prompt,
                                            options={**FAST, "num_ctx": 4096}))
    assert resp.status_code == 200


# --- after all of the above ------------------------------------------------------------------


def test_app_still_serves_normally_afterwards(client):
    """Default sampling (temperature 0.8, no seed) would fail if MLX's random state were broken."""
    resp = send(client, "POST", G, {"model": "tiny", "prompt": "Hello", "stream": False,
                                    "options": {"num_predict": 4}})
    assert resp.status_code == 200, resp.get_data()[:500]
    out = resp.get_json()
    assert out["done"] is True and out["model"] == "tiny"
    resp = send(client, "POST", C, {"model": "tiny",
                                    "messages": [{"role": "user", "content": "hi"}],
                                    "options": {"num_predict": 3}})
    assert resp.status_code == 200
    lines = [json.loads(x) for x in resp.get_data(as_text=True).splitlines()]
    assert lines[-1]["done"] is True and "error" not in lines[-1]
    assert send(client, "POST", S, {"model": "tiny"}).status_code == 200


# --- a real server over raw sockets ----------------------------------------------------------


def raw_request(url: str, request: bytes, *, close_early: bool = False,
                timeout: float = 30) -> bytes:
    """Send bytes on a fresh connection; return everything the server answers."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        if close_early:
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def http_post(path: str, body: bytes, *, extra_headers: str = "",
              length: int | None = None) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n"
            f"{extra_headers}\r\n")
    return head.encode("ascii") + body


def status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    payload = json.loads(body)
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"]
    return status, payload["error"]


def test_real_server_survives_hostile_bodies(server):
    rng = random.Random(1234)
    garbage = bytes(rng.getrandbits(8) for _ in range(1 << 20))  # 1 MiB of random bytes
    bodies = {
        "truncated-json": b'{"model": "tiny", "prompt": "he',
        "one-mib-garbage": garbage,
        "one-mib-ascii-garbage": bytes(rng.choice(b"{}[]:,\"abc01 ") for _ in range(1 << 20)),
        "invalid-utf8": b'{"model":"tiny","prompt":"\xc0\xaf\xed\xa0\x80"}',
        "lone-surrogate-name": b'{"model":"\\udead","prompt":"x"}',
        "deep-nesting": b"[" * 200_000,
        "nan": b'{"model":"tiny","prompt":"x","options":{"temperature":NaN}}',
        "empty": b"",
        "not-an-object": b"[1,2,3]",
    }
    for name, body in bodies.items():
        for path in (G, C):
            answer = raw_request(server, http_post(path, body))
            status, error = status_and_error(answer)
            assert 400 <= status < 500, (name, path, status, error)

    # chunked transfer encoding with a broken body
    chunked = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"mod\r\n0\r\n\r\n")
    status, _ = status_and_error(raw_request(server, chunked))
    assert 400 <= status < 500

    # a client that promises more than it sends, then hangs up; and one that sends only headers
    raw_request(server, http_post(G, b'{"model":"tiny"', length=10_000), close_early=True)
    raw_request(server, b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len",
                close_early=True)
    # a request line that is not HTTP at all
    assert raw_request(server, b"\x16\x03\x01\x02\x00garbage\r\n\r\n") is not None

    # requests' own view: no content type, and form-encoded
    assert requests.post(server + G, data=b"", timeout=30).json() == {"error": MISSING_BODY}
    resp = requests.post(server + C, data={"model": "tiny"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]

    # ... and it still answers
    version = requests.get(server + "/api/version", timeout=30)
    assert version.status_code == 200 and version.json()["version"]
    ok = requests.post(server + G, json={"model": "tiny", "prompt": "hi", "stream": False,
                                         "options": {"num_predict": 2}}, timeout=60)
    assert ok.status_code == 200 and ok.json()["done"] is True


def test_real_server_many_bad_requests_in_a_row(server):
    """Keep-alive connection reuse after errors: a session sends bad and good requests
    alternately."""
    with requests.Session() as s:
        for i in range(20):
            bad = s.post(server + G, data=b"{" * (i + 1),
                         headers={"Content-Type": "application/json"},
                         timeout=30)
            assert bad.status_code == 400 and bad.json()["error"]
            assert s.get(server + "/api/version", timeout=30).status_code == 200


def test_context_ids_outside_the_vocabulary_are_rejected(client):
    for ids in ([999999999], [-1], [1, 2, 10**6]):
        resp = client.post("/api/generate", json={"model": "tiny", "prompt": "a", "context": ids,
                                                  "stream": False})
        assert resp.status_code == 400, ids
        assert "vocabulary" in resp.get_json()["error"]


def test_huge_top_k_does_not_break_later_sampling(client):
    bad = client.post("/api/generate", json={"model": "tiny", "prompt": "a", "stream": False,
                                             "options": {"top_k": 100000, "temperature": 1,
                                                         "num_predict": 3}})
    assert bad.status_code == 200
    ok = client.post("/api/generate", json={"model": "tiny", "prompt": "a", "stream": False,
                                            "options": {"temperature": 0.9, "num_predict": 3}})
    assert ok.status_code == 200 and ok.get_json()["eval_count"] == 3
