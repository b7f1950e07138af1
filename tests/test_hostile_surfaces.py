"""Attacks on the newer request surfaces: Anthropic context editing with huge edit lists, odd
think levels, huge / deeply nested / many tool schemas on /v1/messages and /v1/responses,
top_logprobs 20 on many concurrent streams, and the Admin UI's endpoints with extreme params.

One real server process on the tiny model; every attack is timed beside `/api/version` and a
short `/api/chat` (tests/hostile_util.py) and must end with a clear answer in its protocol's
shape: a 4xx naming the field, or a 200.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from .helpers import start_server, stop_server, write_mappings
from .hostile_util import beside, keep_reading

MODEL = "tiny"


@dataclass
class Srv:
    url: str
    pid: int


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir) -> Iterator[Srv]:
    root = tmp_path_factory.mktemp("hostile-surfaces")
    mappings = write_mappings(root / "map.yaml", {MODEL: {"mlx": str(tiny_model_dir),
                                                          "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    keep_reading(proc, root / "server.log")
    try:
        requests.post(url + "/api/chat", timeout=60, json={"model": MODEL, "messages": []})
        yield Srv(url, proc.pid)
    finally:
        stop_server(proc)


def attack(srv: Srv, send, statuses: tuple[int, ...], words: str = "") -> requests.Response:
    run = beside(srv.url, MODEL, send, pid=srv.pid)
    print(run.row(), getattr(run.result, "status_code", None),
          getattr(run.result, "text", "")[:120])
    assert not isinstance(run.result, Exception), run.result
    resp = run.result
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        assert words in resp.text, resp.text[:500]
    run.assert_unhurt()
    return resp


def messages_api(srv: Srv, **body) -> requests.Response:
    return requests.post(srv.url + "/v1/messages", timeout=120, json={
        "model": MODEL, "max_tokens": 4, **body})


def tool_history(turns: int) -> list[dict]:
    """An Anthropic conversation of `turns` tool calls, each answered with a 1 KB result."""
    out: list[dict] = [{"role": "user", "content": "start"}]
    for i in range(turns):
        out.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"t{i}", "name": "read", "input": {"n": i}}]})
        out.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{i}", "content": "r" * 1000}]})
    out.append({"role": "user", "content": "go on"})
    return out


READ_TOOL = {"name": "read", "description": "read", "input_schema": {
    "type": "object", "properties": {"n": {"type": "integer"}}}}
CLEAR = {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 0},
         "keep": {"type": "tool_uses", "value": 0}}


def test_context_management_with_a_huge_edit_list_is_refused(srv):
    """200,000 edits over 2,000 tool results: before, each edit scanned every message in the
    request thread (minutes of CPU under the GIL); now a 400 naming the field, at once."""
    history = tool_history(2000)
    edits = [CLEAR, {"type": "clear_thinking_20251015"}] * 100_000
    resp = attack(srv, lambda: messages_api(srv, messages=history, tools=[READ_TOOL],
                                            context_management={"edits": edits}),
                  (400,), "context_management.edits")
    assert resp.json()["type"] == "error"


def test_context_management_with_a_long_history_is_answered(srv):
    """The edits Claude Code sends, on 2,000 tool results: applied, answered."""
    resp = attack(srv, lambda: messages_api(
        srv, messages=tool_history(2000), tools=[READ_TOOL],
        context_management={"edits": [{"type": "clear_thinking_20251015"}, CLEAR]}), (200,))
    applied = resp.json()["context_management"]["applied_edits"]
    assert applied[-1]["cleared_tool_uses"] == 2000


THINK = [  # (path, body fields): odd think levels on every protocol
    ("/api/chat", {"think": "extreme"}), ("/api/chat", {"think": 3}),
    ("/api/chat", {"think": ["high"]}), ("/api/chat", {"think": {"level": "high"}}),
    ("/api/generate", {"think": "max"}), ("/api/generate", {"think": -1}),
    ("/v1/chat/completions", {"reasoning_effort": "ultra"}),
    ("/v1/chat/completions", {"reasoning_effort": 7}),
    ("/v1/messages", {"thinking": {"type": "enabled", "budget_tokens": -5}}),
    ("/v1/messages", {"thinking": {"type": "sideways"}}),
    ("/v1/messages", {"thinking": "yes"}),
    ("/v1/responses", {"reasoning": {"effort": "ludicrous"}}),
    ("/v1/responses", {"reasoning": "high"}),
]


def _think_body(path: str, fields: dict) -> dict:
    if path == "/api/generate":
        return {"model": MODEL, "prompt": "hi", "stream": False, **fields}
    if path == "/v1/responses":
        return {"model": MODEL, "input": "hi", "max_output_tokens": 16, **fields}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    if path == "/v1/messages":
        body["max_tokens"] = 4
    return body if path != "/api/chat" else {**body, "stream": False}


@pytest.mark.parametrize(("path", "fields"), THINK, ids=[f"{p}-{json.dumps(f)}" for p, f in THINK])
def test_odd_think_levels_are_a_clear_400(srv, path, fields):
    attack(srv, lambda: requests.post(srv.url + path, json=_think_body(path, fields),
                                      timeout=60), (400,), "")


class Raw(str):
    """A JSON text built by hand: nested deeper than Python's json encoder goes."""


def nested(depth: int) -> Raw:
    return Raw('{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}'
               + "}}" * depth)


def dumps(value) -> str:
    """json.dumps that leaves Raw texts as they are."""
    if isinstance(value, Raw):
        return value
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def many_tools(n: int, protocol: str) -> list[dict]:
    schema = {"type": "object", "properties": {f"p{j}": {"type": "string", "description": "d" * 50}
                                               for j in range(20)}}
    if protocol == "anthropic":
        return [{"name": f"t{i}", "description": "x" * 200, "input_schema": schema}
                for i in range(n)]
    return [{"type": "function", "name": f"t{i}", "description": "x" * 200, "parameters": schema}
            for i in range(n)]


TOOLS = {  # id: (path, body) -- answered or refused clearly, bounded either way
    "messages-5000-tools": ("/v1/messages", lambda: {
        "model": MODEL, "max_tokens": 4, "tools": many_tools(5000, "anthropic"),
        "messages": [{"role": "user", "content": "hi"}]}),
    "responses-5000-tools": ("/v1/responses", lambda: {
        "model": MODEL, "max_output_tokens": 16, "tools": many_tools(5000, "openai"),
        "input": "hi"}),
    "messages-nested-2000": ("/v1/messages", lambda: {
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "deep", "input_schema": nested(2000)}]}),
    "responses-nested-2000": ("/v1/responses", lambda: {
        "model": MODEL, "max_output_tokens": 16, "input": "hi",
        "tools": [{"type": "function", "name": "deep", "parameters": nested(2000)}]}),
    "messages-nested-100-forced": ("/v1/messages", lambda: {
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": {"type": "tool", "name": "deep"},
        "tools": [{"name": "deep", "input_schema": nested(100)}]}),
    "responses-nested-format": ("/v1/responses", lambda: {
        "model": MODEL, "max_output_tokens": 16, "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": nested(2000)}}}),
}


@pytest.mark.parametrize("case", list(TOOLS))
def test_huge_and_deep_tool_schemas_are_bounded(srv, case):
    path, body = TOOLS[case]
    data = dumps(body()).encode()
    attack(srv, lambda: requests.post(srv.url + path, data=data, timeout=120, headers={
        "Content-Type": "application/json"}), (200, 400), "error")


def test_top_logprobs_20_on_8_concurrent_streams(srv):
    """8 streams of 64 tokens with top_logprobs 20 (and one with format json, one with tools)
    while a short chat is timed beside them."""
    def stream(extra: dict) -> int:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}],
                "logprobs": True, "top_logprobs": 20, "options": {"num_predict": 64}, **extra}
        with requests.post(srv.url + "/api/chat", json=body, stream=True, timeout=60) as resp:
            assert resp.status_code == 200, resp.text
            lines = [json.loads(line) for line in resp.iter_lines() if line]
        assert "error" not in lines[-1], lines[-1]
        # 20 alternatives, fewer only where a format's grammar allows fewer tokens
        assert all(1 <= len(lp["top_logprobs"]) <= 20 for line in lines[:-1]
                   for lp in line.get("logprobs") or [])
        if not extra:
            assert all(len(lp["top_logprobs"]) == 20 for line in lines[:-1]
                       for lp in line.get("logprobs") or [])
        return len(lines)

    extras = [{}] * 6 + [{"format": "json"}, {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}}}}]}]

    def all_streams() -> requests.Response:
        counts: list[int] = []
        threads = [threading.Thread(target=lambda e=e: counts.append(stream(e)))
                   for e in extras]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(counts) == 8, counts
        return requests.get(srv.url + "/api/version", timeout=10)

    attack(srv, all_streams, (200,))


def test_top_logprobs_over_20_is_a_clear_400(srv):
    attack(srv, lambda: requests.post(srv.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
        "top_logprobs": 10_000}), (400,), "top_logprobs")


def test_logit_bias_over_the_whole_vocabulary_on_8_concurrent_requests(srv):
    """A bias for every token of the vocabulary (384 here; at most 1,024 are allowed) on 8
    requests at once, each a logits processor inside the batch, beside a short chat."""
    bias = {str(i): (-100 if i % 3 else 2.5) for i in range(384)}

    def one() -> requests.Response:
        return requests.post(srv.url + "/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": "count"}],
            "max_tokens": 32, "logit_bias": bias})

    def all_requests() -> requests.Response:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: one(), range(8)))
        assert [r.status_code for r in answers] == [200] * 8, answers[0].text[:300]
        return answers[0]

    attack(srv, all_requests, (200,))


@pytest.mark.parametrize("bias", [
    {str(i): 1 for i in range(1025)},  # past the 1,024 allowed
    {"7" * 100_000: 1},  # a 100 kB token "id"
    {str(i): 1 for i in range(384, 1024)},  # every id past the vocabulary
])
def test_oversized_logit_bias_is_a_clear_400(srv, bias):
    resp = attack(srv, lambda: requests.post(srv.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "logit_bias": bias}), (400,), "logit_bias")
    assert len(resp.text) < 1000  # the error names the field; it does not echo the input


def test_ui_live_hammered_with_the_widest_window(srv):
    """8 clients asking /api/ui/live for 3600 one-second buckets, 20 times each."""
    def hammer() -> requests.Response:
        def one() -> None:
            for _ in range(20):
                resp = requests.get(srv.url + "/api/ui/live", timeout=30,
                                    params={"window": 3600, "step": 1})
                assert resp.status_code == 200 and len(resp.json()["series"]) >= 0
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return requests.get(srv.url + "/api/ui/live", timeout=30,
                            params={"window": 3600, "step": 1})

    attack(srv, hammer, (200,))


@pytest.mark.parametrize("params", [{"window": "99999999999999999999"}, {"step": "0"},
                                    {"window": "-1"}, {"step": "1e9"}, {"window": "\u0663"},
                                    {"window": "10", "x": "1"}])
def test_ui_live_extreme_params_are_a_clear_400(srv, params):
    resp = attack(srv, lambda: requests.get(srv.url + "/api/ui/live", params=params,
                                            timeout=10), (400,), "error")
    assert resp.json()["error"]


@pytest.mark.parametrize("path", ["/ui/..%2f..%2fapp.py", "/ui/%2e%2e/%2e%2e/config.py",
                                  "/ui/js/../../api/ui.py", "/ui//etc/passwd",
                                  "/ui/%00", "/ui/" + "a/" * 2000 + "x"])
def test_ui_asset_traversal_is_a_404(srv, path):
    resp = attack(srv, lambda: requests.get(srv.url + path, timeout=10), (404,), "")
    assert "import" not in resp.text and "root:" not in resp.text
