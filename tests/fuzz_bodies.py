"""Hypothesis strategies for the fuzzer: garbage, and near-valid bodies for each endpoint.

Near-valid bodies keep most fields plausible and perturb a few (wrong types, odd values, random
shapes), so most cases get past the JSON decoder and exercise the field validation. Bodies that
may really generate carry a small `num_predict` (or a tiny `num_ctx`), so the volume stays cheap.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

LOCAL_MODELS = ["tiny", "tiny:latest", "TINY", "tiny-alias:v1", "tiny-base"]
ODD_NAMES = ["nope", "nope:7b", "", "user/x:1b", "../../etc/passwd", "a b", "x" * 300, "tiny:",
             ":latest", "@sha256:00", "\x00", "tiny\n", "tiny/../../x"]
# "absent:7b" is mapped to a hub repo that is not on disk: /api/pull would try to download it.
MODELS = st.sampled_from(range(6)).flatmap(lambda i: st.sampled_from(LOCAL_MODELS) if i < 4 else (
    st.sampled_from([*ODD_NAMES, "absent:7b"]) if i == 4 else st.text(max_size=20)))
NAMES = st.one_of(st.sampled_from(LOCAL_MODELS), st.sampled_from(ODD_NAMES), st.text(max_size=20))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws (st.integers is biased towards its bounds; this is not)."""
    return st.sampled_from(range(n)).map(lambda i: i == 0)


def maybe(strategy: st.SearchStrategy[Any], weight: int = 8) -> st.SearchStrategy[Any]:
    """Usually the plausible strategy, about once in weight+1 draws any JSON value."""
    return one_in(weight + 1).flatmap(lambda odd: JSON if odd else strategy)


ODD_NUMBERS = st.one_of(
    st.sampled_from([0, 1, -1, -2, -3, 0.5, 1.0, 1.5, 2, 100, 10**6, 2**63, 2**70, -(2**70), 1e39,
                     -1e39, 1e-300, 3.4028235e38]),
    st.integers(-1000, 1000), st.floats(-10, 10, allow_nan=False))
FLOAT01 = st.floats(0, 1)
PLAUSIBLE_OPTIONS = {
    "temperature": st.floats(0, 2), "top_p": FLOAT01, "top_k": st.integers(0, 100),
    "min_p": FLOAT01,
    "typical_p": FLOAT01, "seed": st.integers(-1, 2**32), "num_ctx": st.integers(0, 4096),
    "num_keep": st.integers(0, 8), "repeat_penalty": st.floats(0, 2),
    "repeat_last_n": st.integers(-1, 128),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
    "num_batch": st.integers(1, 512), "num_gpu": st.integers(-1, 99), "main_gpu": st.integers(0, 2),
    "num_thread": st.integers(0, 16), "mirostat": st.integers(0, 2), "tfs_z": st.floats(0, 2),
    **{k: st.booleans() for k in ("use_mmap", "numa", "low_vram", "penalize_newline", "use_mlock")},
    "unknown": JSON,
}
OPTION_KEYS = sorted(PLAUSIBLE_OPTIONS)
# num_predict decides how much work a valid body does: small, or bounded by a tiny num_ctx.
SMALL_PREDICT = st.sampled_from([0, 1, 1, 1, 2, 1.0])


@st.composite
def options(draw: st.DrawFn) -> Any:
    if draw(one_in(20)):
        return draw(JSON)  # not even an object, sometimes
    opts = {}
    for key in draw(st.lists(st.sampled_from(OPTION_KEYS), unique=True, max_size=4)):
        opts[key] = draw(maybe(st.one_of(PLAUSIBLE_OPTIONS[key], ODD_NUMBERS) if draw(one_in(4))
                                else PLAUSIBLE_OPTIONS[key], 12))
    kind = draw(st.sampled_from(range(10)))
    if kind == 0:
        opts["num_predict"] = draw(st.sampled_from([-1, -2]))
        opts["num_ctx"] = draw(st.integers(1, 24))
    elif kind == 1:
        opts["num_predict"] = draw(st.one_of(
            st.sampled_from([-3, 1.5, "1", True, [1], {}, None]), JSON))
        opts.setdefault("num_ctx", 16)  # if the odd value is taken, keep the work bounded
    else:
        opts["num_predict"] = draw(SMALL_PREDICT)
    if isinstance(opts.get("num_ctx"), int | float) and not isinstance(opts["num_ctx"], bool) \
            and opts["num_ctx"] > 4096:
        opts["num_ctx"] = 4096  # (the engine clamps it to the model's 2048 anyway)
    return opts


BASE64 = st.sampled_from(["", "QUJD", "iVBORw0KGgo=", "QQ==", "QUI=", "QUJD\nREVG"])
IMAGES = maybe(st.lists(maybe(st.one_of(BASE64, st.text(max_size=10)), 4), max_size=3), 6)
# some odd ones
ROLES = maybe(st.sampled_from(["system", "user", "assistant", "tool", "USER", "developer"]),
              12).flatmap(
    lambda role: st.sampled_from(["", "wizard"]) if role == "developer" else st.just(role))
TOOL = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["function", "x"]), "function": st.one_of(
        st.fixed_dictionaries({"name": st.one_of(st.text(max_size=8), JSON),
                               "parameters": st.one_of(
                                   st.just({"type": "object", "properties": {}}), JSON)}),
        JSON)}),
    JSON)
TOOL_CALL = st.one_of(st.fixed_dictionaries({"function": st.fixed_dictionaries({
    "name": st.one_of(st.text(max_size=8), JSON),
    "arguments": st.one_of(st.just({}), JSON)})}), JSON)


@st.composite
def message(draw: st.DrawFn) -> Any:
    if draw(one_in(15)):
        return draw(JSON)
    msg = {"role": draw(ROLES), "content": draw(maybe(st.text(max_size=20), 12))}
    extra = draw(st.dictionaries(st.sampled_from(["images", "thinking", "tool_calls", "tool_name",
                                                  "tool_call_id", "name", "other"]),
                                 st.just(None), max_size=2))
    for key in extra:
        msg[key] = draw({"images": IMAGES,
                         "tool_calls": maybe(st.lists(TOOL_CALL, max_size=2))}.get(
            key, maybe(st.text(max_size=8))))
    return msg


FORMAT = st.one_of(st.sampled_from(["json", "", None, "yaml", {"type": "object"},
                                    {"type": "object", "properties": {"a": {"type": "integer"}}},
                                    {"type": "string", "maxLength": 3}, {"type": 5}, {"enum": []},
                                    {"$ref": "#/nope"},
                                    {"type": "array", "items": {"type": "boolean"}}]), JSON)
THINK = st.one_of(st.sampled_from([True, False, None, "high", "low", "x", "TRUE", 1]), JSON)
KEEP_ALIVE = st.one_of(st.sampled_from(["5m", "1h", -1, 300, 300.5, "300", "-1m", "1d", True, [5],
                                        None, "9999999999h", 1e300, -1e300]), JSON)
COMMON = {"stream": maybe(st.booleans()), "format": FORMAT, "think": THINK,
          "keep_alive": KEEP_ALIVE,
          "truncate": maybe(st.booleans()), "logprobs": maybe(st.booleans()),
          "top_logprobs": maybe(st.integers(-2, 25)), "other": JSON}


@st.composite
def with_some(draw: st.DrawFn, base: dict[str, Any],
              optional: dict[str, st.SearchStrategy[Any]]) -> dict:
    """`base` (always drawn) plus a random subset of `optional` fields."""
    body = {k: draw(v) for k, v in base.items()}
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        body[key] = draw(optional[key])
    return body


def generate_body() -> st.SearchStrategy[dict]:
    return with_some({"model": MODELS, "prompt": maybe(st.text(max_size=30), 5),
                      "options": options()}, {
        **COMMON, "system": maybe(st.text(max_size=10)), "suffix": maybe(st.text(max_size=5)),
        "template": maybe(st.sampled_from(["{{ .Prompt }}", "{{ .System }} {{ .Prompt }}", "{{",
                                           "{{ .Nope }}",
                                           "{{ range .Messages }}{{ .Content }}{{ end }}",
                                           "{{ if }}"])),
        "context": maybe(st.lists(st.integers(-5, 500), max_size=5)), "raw": maybe(st.booleans()),
        "images": IMAGES})


def chat_body() -> st.SearchStrategy[dict]:
    return with_some({"model": MODELS,
                      "messages": maybe(st.lists(message(), min_size=1, max_size=4), 12),
                      "options": options()},
                     {**COMMON, "tools": maybe(st.lists(TOOL, max_size=2))})


OPENAI_SAMPLING = {"temperature": maybe(ODD_NUMBERS), "top_p": maybe(ODD_NUMBERS),
                   "seed": maybe(ODD_NUMBERS),
                   "frequency_penalty": maybe(ODD_NUMBERS), "presence_penalty": maybe(ODD_NUMBERS),
                   "stop": maybe(st.one_of(st.text(max_size=3),
                                           st.lists(st.text(max_size=3), max_size=2))),
                   "stream": maybe(st.booleans()),
                   "stream_options": maybe(st.just({"include_usage": True})),
                   "n": JSON, "user": JSON, "logit_bias": JSON}
PART = maybe(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(st.text(max_size=10))}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.one_of(
        st.sampled_from(["data:image/png;base64,QUJD", "data:image/png;base64,@@", "https://x/y.png"]),
        st.fixed_dictionaries({"url": st.sampled_from(["data:image/png;base64,QUJD", "nope"])}),
        JSON)})), 6)


@st.composite
def openai_message(draw: st.DrawFn) -> Any:
    if draw(one_in(15)):
        return draw(JSON)
    msg = {"role": draw(ROLES),
           "content": draw(maybe(st.one_of(st.text(max_size=20), st.lists(PART, max_size=3))))}
    if draw(one_in(6)):
        msg["tool_calls"] = draw(maybe(st.lists(st.one_of(st.fixed_dictionaries({
            "id": st.text(max_size=4), "type": st.just("function"),
            "function": st.fixed_dictionaries({
                "name": st.text(max_size=5),
                "arguments": st.sampled_from(["{}", '{"a":1}', "{", "[]", ""])})}),
            JSON), max_size=2)))
    if draw(one_in(6)):
        msg["tool_call_id"] = draw(maybe(st.text(max_size=4)))
    return msg


def openai_chat_body() -> st.SearchStrategy[dict]:
    return with_some({"model": MODELS,
                      "messages": maybe(st.lists(openai_message(), min_size=1, max_size=4), 12),
                      "max_tokens": st.sampled_from([1, 1, 2, 0])}, {
        **OPENAI_SAMPLING, "max_completion_tokens": maybe(ODD_NUMBERS),
        "tools": maybe(st.lists(TOOL, max_size=2)),
        "response_format": maybe(st.one_of(st.sampled_from([
            {"type": "text"}, {"type": "json_object"}, {"type": "json_schema"}, {"type": "xml"},
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}]))),
        "reasoning_effort": maybe(st.sampled_from(["none", "low", "high", "ultra", "x"])),
        "reasoning": maybe(st.fixed_dictionaries({
            "effort": maybe(st.sampled_from(["low", "nope"]))}))})


def openai_completion_body() -> st.SearchStrategy[dict]:
    return with_some({"model": MODELS, "prompt": maybe(st.text(max_size=20), 5),
                      "max_tokens": st.sampled_from([1, 1, 2, 0])},
                     {**OPENAI_SAMPLING, "suffix": maybe(st.text(max_size=4)), "echo": JSON,
                      "logprobs": JSON})


ANTHROPIC_BLOCK = maybe(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(st.text(max_size=10))}),
    st.fixed_dictionaries({"type": st.just("image"), "source": st.one_of(st.fixed_dictionaries({
        "type": st.sampled_from(["base64", "url"]), "media_type": st.just("image/png"),
        "data": maybe(BASE64)}), JSON)}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": maybe(st.text(max_size=4)),
                           "name": maybe(st.text(max_size=5)), "input": maybe(st.just({"a": 1}))}),
    st.fixed_dictionaries({"type": st.just("tool_result"),
                           "tool_use_id": maybe(st.text(max_size=4)),
                           "content": maybe(st.one_of(st.text(max_size=5),
                                                      st.lists(JSON, max_size=2))),
                           "is_error": maybe(st.booleans())}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": maybe(st.text(max_size=5)),
                           "signature": st.just("")}),
    st.fixed_dictionaries({"type": st.sampled_from(["document", "redacted_thinking", "x"])})), 6)
ANTHROPIC_TOOL = st.one_of(
    st.fixed_dictionaries({"name": maybe(st.text(max_size=5)),
                           "description": maybe(st.text(max_size=5)),
                           "input_schema": st.one_of(st.just({"type": "object", "properties": {
                               "a": {"type": "integer"}}}), JSON)}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search_20250305", "custom"]),
                           "name": st.just("w")}), JSON)


@st.composite
def anthropic_message(draw: st.DrawFn) -> Any:
    if draw(one_in(15)):
        return draw(JSON)
    return {"role": draw(maybe(st.sampled_from(["user", "assistant", "system", "USER"]), 12)),
            "content": draw(maybe(st.one_of(st.text(max_size=20),
                                            st.lists(ANTHROPIC_BLOCK, max_size=3))))}


def anthropic_body() -> st.SearchStrategy[dict]:
    """/v1/messages and /v1/messages/count_tokens (which ignores max_tokens)."""
    return with_some({"model": MODELS,
                      "messages": maybe(st.lists(anthropic_message(), min_size=1, max_size=4),
                                        12),
                      "max_tokens": st.sampled_from([1, 1, 2, 0, -1])}, {
        "system": maybe(st.one_of(st.text(max_size=10), st.lists(st.fixed_dictionaries(
            {"type": st.just("text"), "text": st.text(max_size=5)}), max_size=2))),
        "stream": maybe(st.booleans()), "temperature": maybe(ODD_NUMBERS),
        "top_p": maybe(ODD_NUMBERS), "top_k": maybe(ODD_NUMBERS),
        "stop_sequences": maybe(st.lists(st.text(max_size=3), max_size=2)),
        "tools": maybe(st.lists(ANTHROPIC_TOOL, max_size=2)),
        "tool_choice": maybe(st.sampled_from([
            {"type": "auto"}, {"type": "any"}, {"type": "none"},
            {"type": "tool", "name": "a"}, {"type": "x"},
            {"type": "auto", "disable_parallel_tool_use": True}])),
        "thinking": maybe(st.sampled_from([
            {"type": "enabled", "budget_tokens": 1024}, {"type": "disabled"},
            {"type": "enabled", "budget_tokens": 10}, {"type": "adaptive"},
            {"type": "between_tools"}])),
        "output_config": maybe(st.sampled_from([
            {"effort": "high"}, {"effort": "x"}, {"format": {"type": "json_schema"}},
            {"format": {"type": "json_schema", "schema": {"type": "object"}}}])),
        "metadata": maybe(st.sampled_from([{"user_id": "u"}, {"x": 1}])),
        "service_tier": maybe(st.sampled_from(["auto", "priority"])), "container": JSON})


RESPONSES_PART = maybe(st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]),
                           "text": maybe(st.text(max_size=10))}),
    st.fixed_dictionaries({"type": st.just("input_image"), "image_url": st.sampled_from(
        ["data:image/png;base64,QUJD", "https://x/y.png", "data:x", ""])}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_file", "x"])})), 6)
RESPONSES_CONTENT = maybe(st.one_of(st.text(max_size=20), st.lists(RESPONSES_PART, max_size=3)))
RESPONSES_ITEM = maybe(st.one_of(
    st.fixed_dictionaries({"role": ROLES, "content": RESPONSES_CONTENT}),
    st.fixed_dictionaries({"type": st.just("message"),
                           "role": st.sampled_from(["user", "assistant", "developer", "x"]),
                           "content": RESPONSES_CONTENT}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": maybe(st.text(max_size=4)),
                           "name": maybe(st.text(max_size=5)),
                           "arguments": maybe(st.sampled_from(["{}", '{"a":1}', "{", "[]", ""]))}),
    st.fixed_dictionaries({"type": st.just("function_call_output"),
                           "call_id": maybe(st.text(max_size=4)),
                           "output": RESPONSES_CONTENT}),
    st.fixed_dictionaries({"type": st.just("reasoning"),
                           "summary": maybe(st.lists(JSON, max_size=2)),
                           "encrypted_content": maybe(st.text(max_size=5))}),
    st.fixed_dictionaries({"type": st.sampled_from(["item_reference", "x"])})), 6)
RESPONSES_TOOL = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "name": maybe(st.text(max_size=5)),
                           "parameters": st.one_of(
                               st.just({"type": "object", "properties": {}}), JSON)}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search"])}), JSON)


def responses_body() -> st.SearchStrategy[dict]:
    return with_some({"model": MODELS, "input": maybe(st.one_of(st.text(max_size=20), st.lists(
        RESPONSES_ITEM, max_size=4)), 12), "max_output_tokens": st.sampled_from([1, 1, 2, 0])}, {
        "instructions": maybe(st.text(max_size=8)), "stream": maybe(st.booleans()),
        "temperature": maybe(ODD_NUMBERS), "top_p": maybe(ODD_NUMBERS),
        "tools": maybe(st.lists(RESPONSES_TOOL, max_size=2)),
        "tool_choice": maybe(st.sampled_from([
            "auto", "none", "required", {"type": "function", "name": "a"},
            {"type": "allowed_tools", "mode": "required",
             "tools": [{"type": "function", "name": "a"}]}, {"type": "web_search"}])),
        "text": maybe(st.sampled_from([
            {"format": {"type": "text"}}, {"format": {"type": "json_object"}},
            {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            {"format": {"type": "json_schema"}}, {"verbosity": "low"}])),
        "reasoning": maybe(st.sampled_from([{"effort": "high"}, {"effort": "none"}, {"effort": "x"},
                                            {"summary": "auto"}])),
        "parallel_tool_calls": maybe(st.booleans()), "max_tool_calls": maybe(ODD_NUMBERS),
        "truncation": maybe(st.sampled_from(["auto", "disabled", "x"])),
        "store": maybe(st.booleans()),
        "previous_response_id": JSON, "include": maybe(st.lists(st.sampled_from(
            ["reasoning.encrypted_content", "x"]), max_size=2)), "metadata": JSON, "user": JSON})


def embed_body() -> st.SearchStrategy[dict]:
    return with_some({"model": MODELS}, {"input": maybe(st.one_of(st.text(max_size=5), st.lists(
        st.text(max_size=5), max_size=3))), "prompt": maybe(st.text(max_size=5)), "truncate": JSON,
        "dimensions": maybe(ODD_NUMBERS),
        "encoding_format": maybe(st.sampled_from(["float", "base64", "x"])),
        "options": options(), "keep_alive": KEEP_ALIVE})


def name_body() -> st.SearchStrategy[dict]:
    """show / delete / pull / copy / create / push: names and a few flags."""
    return with_some({"model": NAMES}, {"name": NAMES, "verbose": maybe(st.booleans()),
                          "stream": maybe(st.booleans()), "insecure": JSON, "source": NAMES,
                          "destination": NAMES, "from": JSON, "files": JSON, "modelfile": JSON})


ADMIN_ROW = with_some({}, {
    "model_name": maybe(MODELS), "backend_type": maybe(st.sampled_from(["mlx", "ollama", "x", ""])),
    "endpoint_url": maybe(st.sampled_from(["http://127.0.0.1:1", "https://h", "ftp://h", "http://",
                                           "http://h:99999", "http://h/?q=1", "http://[::1",
                                           "x" * 3000])),
    "mlx_model": maybe(st.sampled_from(["org/name", "/abs/dir", "~/m", "../up", "a/../b", ""])),
    "enabled": maybe(st.booleans()), "priority": maybe(ODD_NUMBERS),
    "max_tokens": maybe(ODD_NUMBERS),
    "temperature_default": maybe(ODD_NUMBERS), "timeout_seconds": maybe(ODD_NUMBERS),
    "description": maybe(st.text(max_size=10)), "id": JSON, "created_at": JSON,
    "avg_ttft_ms": JSON})


def encoded(body: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A JSON body, sometimes damaged: cut short, a byte flipped, or bad UTF-8 spliced in."""
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        raw = json.dumps(draw(body)).encode()
        damage = draw(st.sampled_from(range(12)))
        if damage == 0 and raw:
            return raw[:draw(st.integers(0, len(raw) - 1))]
        if damage == 1 and raw:
            i = draw(st.integers(0, len(raw) - 1))
            return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
        if damage == 2:
            i = draw(st.integers(0, len(raw)))
            bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00",
                                        b"\\ud800"]))
            return raw[:i] + bad + raw[i:]
        return raw
    return build()


GARBAGE = st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode),
                    JSON.map(lambda v: json.dumps(v).encode()),
                    st.sampled_from([b"", b"{", b"[" * 5000, b'{"a":' * 3000, b"null", b"NaN",
                                     b'"\\ud800"',
                                     b'{"model":"tiny","prompt":"x","options":{"temperature":1e999}}']))

# Deep nesting in a field that is otherwise valid: decoders, schema compilers, templates and
# re-encoders all recurse, and Python's stack gives out near depth 1000 (Go's decoder: 10000).
DEEP_TEMPLATES = [
    ("/api/generate", '{"model":"tiny","prompt":"x","options":{"num_predict":1},"format":@}'),
    ("/api/generate", '{"model":"tiny","prompt":"x","options":{"num_predict":1,"x":@}}'),
    ("/api/chat", '{"model":"tiny","messages":[{"role":"user","content":"x"}],'
                  '"options":{"num_predict":1},'
                  '"tools":[{"type":"function","function":{"name":"f","parameters":@}}]}'),
    ("/api/chat", '{"model":"tiny","options":{"num_predict":1},'
                  '"messages":[{"role":"assistant","content":"",'
                  '"tool_calls":[{"function":{"name":"f","arguments":@}}]},'
                  '{"role":"user","content":"x"}]}'),
    ("/v1/chat/completions",
     '{"model":"tiny","max_tokens":1,"messages":[{"role":"user","content":"x"}],'
     '"response_format":{"type":"json_schema","json_schema":{"schema":@}}}'),
    ("/v1/chat/completions",
     '{"model":"tiny","max_tokens":1,"messages":[{"role":"assistant","content":"",'
     '"tool_calls":[{"id":"1","function":{"name":"f","arguments":$}}]},'
     '{"role":"user","content":"x"}]}'),
    ("/v1/chat/completions",
     '{"model":"tiny","max_tokens":1,"messages":[{"role":"user","content":@}]}'),
    ("/v1/messages", '{"model":"tiny","max_tokens":1,"messages":[{"role":"user","content":"x"}],'
                     '"tools":[{"name":"f","input_schema":@}],"tool_choice":{"type":"any"}}'),
    ("/v1/messages", '{"model":"tiny","max_tokens":1,'
                     '"messages":[{"role":"assistant","content":[{"type":"tool_use",'
                     '"id":"1","name":"f","input":@}]},{"role":"user","content":"x"}]}'),
    ("/v1/messages/count_tokens", '{"model":"tiny","messages":[{"role":"user","content":"x"}],'
                                  '"tools":[{"name":"f","input_schema":@}]}'),
    ("/v1/responses", '{"model":"tiny","max_output_tokens":1,"input":"x","tool_choice":"required",'
                      '"tools":[{"type":"function","name":"f","parameters":@}]}'),
    ("/v1/responses", '{"model":"tiny","max_output_tokens":1,"input":"x",'
                      '"text":{"format":{"type":"json_schema","name":"x","schema":@}}}'),
    ("/v1/responses", '{"model":"tiny","max_output_tokens":1,'
                      '"input":[{"type":"function_call","call_id":"1",'
                      '"name":"f","arguments":$},{"role":"user","content":"x"}]}'),
    ("/api/show", '{"model":"tiny","verbose":@}'),
    ("/api/llm-backends", '{"model_name":"tiny","backend_type":"mlx","description":@}'),
]


@st.composite
def deep_body(draw: st.DrawFn) -> tuple[str, bytes]:
    path, template = draw(st.sampled_from(DEEP_TEMPLATES))
    depth = draw(st.one_of(st.integers(1, 60), st.integers(400, 1100), st.integers(1100, 12000)))
    opener, closer = draw(st.sampled_from([('{"a":', "}"), ("[", "]"),
                                           ('{"type":"array","items":', "}")]))
    value = opener * depth + '{"type":"object"}' + closer * depth
    return path, template.replace("@", value).replace("$", json.dumps(value)).encode()
