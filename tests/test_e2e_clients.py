"""End to end: a real `mlx-bridge serve` process driven by the official clients and raw HTTP."""

from __future__ import annotations

import json
import os
import signal

import ollama
import pytest
import requests

from .conftest import start_server

GREEDY = {"temperature": 0, "num_predict": 10}


@pytest.fixture
def client(server) -> ollama.Client:
    return ollama.Client(host=server)


def test_ollama_list_show_ps(client):
    names = [m.model for m in client.list().models]
    assert "tiny:latest" in names and "absent:7b" not in names
    shown = client.show("tiny")
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.details.family == "llama"
    assert "completion" in shown.capabilities
    client.generate(model="tiny", prompt="", keep_alive="5m")
    ps = client.ps().models
    assert any(m.model == "tiny:latest" and m.size > 0 and m.expires_at for m in ps)


def test_ollama_generate_and_chat_stream(client):
    parts = list(client.generate(model="tiny", prompt="hello", stream=True, options=GREEDY))
    assert len(parts) >= 2 and parts[-1].done and parts[-1].done_reason == "length"
    whole = client.generate(model="tiny", prompt="hello", options=GREEDY)
    assert "".join(p.response for p in parts) == whole.response
    assert whole.eval_count == 10 and whole.prompt_eval_count > 0 and whole.total_duration > 0

    messages = [{"role": "user", "content": "hi"}]
    chunks = list(client.chat(model="tiny", messages=messages, stream=True, options=GREEDY))
    assert all(c.message.role == "assistant" for c in chunks)
    reply = client.chat(model="tiny", messages=messages, options=GREEDY)
    assert "".join(c.message.content for c in chunks) == reply.message.content
    assert chunks[-1].eval_count == 10


def test_ollama_errors_are_response_errors(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404 and "model 'nope' not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nope")
    assert err.value.status_code == 404


def test_langchain_chat_ollama(server):
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model="tiny", base_url=server, temperature=0, num_predict=8)
    msg = llm.invoke("hello")
    assert isinstance(msg.content, str) and msg.content
    assert msg.usage_metadata["output_tokens"] == 8
    assert msg.usage_metadata["input_tokens"] > 0
    assert msg.response_metadata["model_name"] == "tiny"
    chunks = list(llm.stream("hello"))
    assert "".join(c.content for c in chunks) == msg.content
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) == 8


def test_raw_http_stream_is_flushed_per_token(server):
    body = {"model": "tiny", "prompt": "count", "options": {"temperature": 0, "num_predict": 30}}
    with requests.post(server + "/api/generate", json=body, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line is not None]
    assert all(line for line in lines)
    assert len(lines) > 10  # one line per token, not one buffered blob
    final = lines[-1]
    for key in ("model", "created_at", "done", "done_reason", "total_duration", "load_duration",
                "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration",
                "context"):
        assert key in final, key


def test_raw_http_must_fields(server):
    tags = requests.get(server + "/api/tags", timeout=10).json()["models"]
    for m in tags:
        assert {"name", "model", "modified_at", "size", "digest", "details"} <= m.keys()
        assert len(m["digest"]) == 64
    show = requests.post(server + "/api/show", json={"name": "tiny"}, timeout=10).json()
    assert {"modelfile", "parameters", "template", "details", "model_info", "capabilities",
            "modified_at"} <= show.keys()
    assert requests.head(server + "/", timeout=5).status_code == 200
    assert requests.get(server + "/api/version", timeout=5).json()["version"] == "0.33.0"
    nf = requests.get(server + "/api/nothing", timeout=5)
    assert nf.status_code == 404 and nf.text == "404 page not found"


def test_ollama_host_env_is_honoured(server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", server.removeprefix("http://"))
    assert "tiny:latest" in [m.model for m in ollama.Client().list().models]


def test_sigterm_exits_cleanly(mappings_file, tmp_path):
    proc, url = start_server(["--mappings", str(mappings_file), "--home", str(tmp_path)])
    requests.post(url + "/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": -1},
                  timeout=30)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    out = proc.stdout.read().decode()
    assert "Traceback" not in out and "terminate called" not in out


def test_binds_loopback_by_default(mappings_file, tmp_path):
    from bridge.config import load_config

    assert load_config({}).host.bind == "127.0.0.1:11434"
    proc, url = start_server(["--mappings", str(mappings_file), "--home", str(tmp_path)])
    try:
        port = url.rsplit(":", 1)[1]
        rows = [line.split() for line in os.popen("ss -ltn 2>/dev/null").read().splitlines()[1:]]
        local = [r[3] for r in rows if len(r) > 3 and r[3].endswith(":" + port)]
        if rows:  # `ss` may be missing; the config assertion above still holds
            assert local == [f"127.0.0.1:{port}"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
