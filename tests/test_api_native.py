"""Native API behaviour on the real MLX engine with the tiny model (in-process Flask client)."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

GREEDY = {"temperature": 0, "num_predict": 12, "seed": 1}
HEX64 = re.compile(r"[0-9a-f]{64}")


def ndjson(resp) -> list[dict]:
    text = resp.get_data(as_text=True)
    assert "\n\n" not in text, "blank lines break ollama-python"
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def loaded_names(client) -> set[str]:
    return {m["name"] for m in client.get("/api/ps").get_json()["models"]}


def test_generate_stream_concat_equals_non_stream(client):
    body = {"model": "tiny", "prompt": "Once upon a time", "options": GREEDY}
    streamed = client.post("/api/generate", json=body)  # stream defaults to true
    assert streamed.status_code == 200
    assert streamed.headers["Content-Type"].startswith("application/x-ndjson")
    lines = ndjson(streamed)
    assert len(lines) >= 2 and all(not line["done"] for line in lines[:-1])
    final = lines[-1]
    single = client.post("/api/generate", json={**body, "stream": False}).get_json()
    assert "".join(line["response"] for line in lines) == single["response"]
    assert single["response"]
    assert final["done"] is True and final["response"] == ""
    assert final["done_reason"] == single["done_reason"] == "length"
    assert final["eval_count"] == single["eval_count"] == 12
    assert final["context"] == single["context"]


def test_final_chunk_metrics_are_nanosecond_integers(client):
    out = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False,
                                             "options": GREEDY}).get_json()
    for key in ("total_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(out[key], int) and out[key] > 0, key
    assert out["total_duration"] >= out["prompt_eval_duration"] + out["eval_duration"]
    assert out["created_at"].endswith("Z")
    datetime.fromisoformat(out["created_at"].replace("Z", "+00:00"))


def test_chat_stream_and_non_stream_agree(client):
    body = {"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hello"}], "options": GREEDY}
    lines = ndjson(client.post("/api/chat", json=body))
    for line in lines:
        assert line["message"]["role"] == "assistant"
        assert isinstance(line["message"]["content"], str)
    single = client.post("/api/chat", json={**body, "stream": False}).get_json()
    assert "".join(x["message"]["content"] for x in lines) == single["message"]["content"]
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "length"
    assert "context" not in lines[-1]
    assert single["prompt_eval_count"] > 0 and single["eval_count"] == 12


def test_chat_history_goes_through_the_template(client):
    short = client.post("/api/chat", json={"model": "tiny", "stream": False, "options": GREEDY,
                                            "messages": [{"role": "user", "content": "hi"}]
                                            }).get_json()
    long = client.post("/api/chat", json={"model": "tiny", "stream": False, "options": GREEDY,
                                          "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "hi"}]}).get_json()
    assert long["prompt_eval_count"] > short["prompt_eval_count"] + 5


def test_model_name_echoed_as_sent_and_case_insensitive(client):
    for name in ("tiny", "TINY:latest", "Tiny"):
        out = client.post("/api/generate", json={"model": name, "prompt": "x", "stream": False,
                                                 "options": {"num_predict": 1}}).get_json()
        assert out["model"] == name


def test_greedy_is_deterministic_and_seeded_sampling_repeats(client):
    body = {"model": "tiny", "prompt": "abc", "stream": False}
    a = client.post("/api/generate", json={**body, "options": GREEDY}).get_json()["response"]
    b = client.post("/api/generate", json={**body, "options": GREEDY}).get_json()["response"]
    assert a == b
    hot = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": 42, "num_predict": 12}
    c = client.post("/api/generate", json={**body, "options": hot}).get_json()["response"]
    d = client.post("/api/generate", json={**body, "options": hot}).get_json()["response"]
    assert c == d


def test_num_predict_and_stop(client):
    out = client.post("/api/generate", json={"model": "tiny", "prompt": "abc", "stream": False,
                                             "options": {**GREEDY, "num_predict": 3}}).get_json()
    assert out["eval_count"] == 3 and out["done_reason"] == "length"
    full = client.post("/api/generate", json={"model": "tiny", "prompt": "abc", "stream": False,
                                              "options": {**GREEDY, "num_predict": 20}}
                       ).get_json()["response"]
    stop = full[4:6]
    assert stop
    cut = client.post("/api/generate", json={"model": "tiny", "prompt": "abc", "stream": False,
                                             "options": {**GREEDY, "num_predict": 20,
                                                         "stop": [stop]}}).get_json()
    assert cut["done_reason"] == "stop"
    assert cut["response"] == full[: full.index(stop)]
    assert stop not in cut["response"]
    lines = ndjson(client.post("/api/generate", json={"model": "tiny", "prompt": "abc",
                                                      "options": {**GREEDY, "num_predict": 20,
                                                                  "stop": [stop]}}))
    assert "".join(x["response"] for x in lines) == cut["response"]


def test_unknown_and_null_options_are_ignored(client):
    opts = {**GREEDY, "num_predict": 2.0, "mirostat": 2, "tfs_z": None, "numa": False,
            "num_ctx": 4096, "typical_p": None, "penalize_newline": True, "unknown_key": [1]}
    out = client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                             "options": opts, "width": 3, "extra_field": {"a": 1}})
    assert out.status_code == 200 and out.get_json()["eval_count"] == 2


def test_all_sampling_options_accepted(client):
    opts = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "num_predict": 4,
            "seed": 3, "repeat_penalty": 1.2, "repeat_last_n": 16, "presence_penalty": 0.5,
            "frequency_penalty": 0.3, "stop": ["\n\n\n"]}
    out = client.post("/api/chat", json={"model": "tiny", "stream": False, "options": opts,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert out.status_code == 200, out.get_data(as_text=True)
    assert out.get_json()["eval_count"] <= 4


def test_raw_template_system_and_context(client):
    base = {"model": "tiny", "stream": False, "options": GREEDY}
    raw = client.post("/api/generate", json={**base, "prompt": "hello", "raw": True}).get_json()
    assert "context" not in raw
    templated = client.post("/api/generate", json={**base, "prompt": "hello"}).get_json()
    # the chat template adds tokens
    assert templated["prompt_eval_count"] > raw["prompt_eval_count"]
    custom = client.post("/api/generate", json={**base, "prompt": "hello",
                                                "template": "{{ .Prompt }}"}).get_json()
    assert custom["prompt_eval_count"] == raw["prompt_eval_count"]
    with_system = client.post("/api/generate", json={**base, "prompt": "hello",
                                                     "system": "be terse"}).get_json()
    assert with_system["prompt_eval_count"] > templated["prompt_eval_count"]
    follow = client.post("/api/generate", json={**base, "prompt": "more",
                                                "context": templated["context"]}).get_json()
    assert follow["prompt_eval_count"] > len(templated["context"])


def test_base_model_without_chat_template(client):
    out = client.post("/api/chat", json={"model": "tiny-base", "stream": False, "options": GREEDY,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert out.status_code == 200 and out.get_json()["message"]["content"]


def test_load_and_unload_with_empty_prompt(client):
    load = client.post("/api/generate", json={"model": "tiny", "prompt": ""})
    assert load.status_code == 200
    body = load.get_json()  # one plain object even though stream defaults to true
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
    assert any(m["name"] == "tiny:latest" for m in client.get("/api/ps").get_json()["models"])
    unload = client.post("/api/generate", json={"model": "tiny", "keep_alive": 0}).get_json()
    assert unload["done_reason"] == "unload"
    assert not loaded_names(client) & {"tiny:latest", "tiny-alias:v1"}
    chat_load = client.post("/api/chat", json={"model": "tiny", "messages": []}).get_json()
    assert chat_load["done_reason"] == "load"
    assert chat_load["message"] == {"role": "assistant", "content": ""}
    chat_unload = client.post("/api/chat", json={"model": "tiny", "messages": [],
                                                 "keep_alive": "0s"}).get_json()
    assert chat_unload["done_reason"] == "unload"


def test_keep_alive_zero_unloads_after_request(client):
    client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                       "options": {"num_predict": 1}, "keep_alive": 0})
    assert not loaded_names(client) & {"tiny:latest", "tiny-alias:v1"}


def test_ps_lists_shared_weights_once_with_expiry(client):
    client.post("/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": "10m"})
    client.post("/api/generate", json={"model": "tiny-alias:v1", "prompt": "", "keep_alive": "10m"})
    models = [m for m in client.get("/api/ps").get_json()["models"]
              if m["name"] in ("tiny:latest", "tiny-alias:v1")]
    assert len(models) == 1, "two names mapped to one directory share one loaded model"
    assert models[0]["name"] == "tiny-alias:v1"  # listed under the name last used
    m = models[0]
    assert m["name"] == m["model"] and HEX64.fullmatch(m["digest"])
    assert m["size"] > 0 and m["size_vram"] == 0 and m["context_length"] == 2048
    expires = datetime.fromisoformat(m["expires_at"].replace("Z", "+00:00"))
    assert 500 < (expires - datetime.now(expires.tzinfo)).total_seconds() <= 600
    client.post("/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": -1})
    forever = next(m for m in client.get("/api/ps").get_json()["models"]
                   if m["name"] == "tiny:latest")["expires_at"]
    assert forever.startswith("23")  # > 20 years ahead: the CLI prints "Forever"
    client.post("/api/generate", json={"model": "tiny", "keep_alive": 0})


def test_tags_describe_present_models_only(client):
    models = client.get("/api/tags").get_json()["models"]
    names = {m["name"] for m in models}
    assert {"tiny:latest", "tiny-alias:v1", "tiny-base:latest"} <= names
    assert "absent:7b" not in names  # mapped but not on disk
    for m in models:
        assert m["name"] == m["model"] and HEX64.fullmatch(m["digest"]) and m["size"] > 0
        d = m["details"]
        assert (d["family"] == "llama" and d["families"] == ["llama"]
                and d["format"] == "safetensors")
        assert d["quantization_level"] == "F32" and d["parameter_size"]
        datetime.fromisoformat(m["modified_at"].replace("Z", "+00:00"))
    stamps = [m["modified_at"] for m in models]
    assert stamps == sorted(stamps, reverse=True)


@pytest.mark.parametrize("key", ["model", "name"])
def test_show_accepts_model_or_name(client, key):
    out = client.post("/api/show", json={key: "tiny"})
    assert out.status_code == 200
    body = out.get_json()
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["model_info"]["llama.context_length"] == 2048
    assert body["model_info"]["llama.embedding_length"] == 64
    assert "completion" in body["capabilities"]
    assert "<|im_start|>" in body["template"]
    assert body["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert re.fullmatch(r'stop {27}"<\|im_end\|>"', body["parameters"].splitlines()[0])
    assert body["details"]["family"] == "llama"


def test_show_verbose_lists_tensors(client):
    body = client.post("/api/show", json={"model": "tiny", "verbose": True}).get_json()
    names = {t["name"] for t in body["tensors"]}
    assert "model.embed_tokens.weight" in names


def test_version_root_and_health(client):
    assert client.get("/api/version").get_json()["version"] == "0.33.0"
    root = client.get("/")
    assert root.status_code == 200 and root.get_data(as_text=True) == "Ollama is running"
    assert client.head("/").status_code == 200
    health = client.get("/health").get_json()
    assert health["engine"]["state"] == "running"
    assert health["backends"]["mlx"]["device"] == "cpu"
    assert "ollama" in health["backends"]


def test_delete_refuses_the_users_directory(client, tiny_model_dir):
    out = client.delete("/api/delete", json={"model": "tiny"})
    assert out.status_code == 400
    assert "mlx-bridge only deletes what it downloaded" in out.get_json()["error"]
    assert (tiny_model_dir / "config.json").exists()


def test_delete_removes_what_the_bridge_downloaded(client, app, tmp_path):
    from bridge.testing import build_tiny_model

    registry = app.extensions["bridge"].registry
    target = registry.downloads_dir / "example-org" / "Tiny-Download"
    build_tiny_model(target)
    local_file = registry.home / "local_models.yaml"
    local_file.write_text('models:\n  "dl:1b":\n    mlx: example-org/Tiny-Download\n')
    try:
        assert client.post("/api/generate", json={"model": "dl:1b",
                                                  "prompt": ""}).status_code == 200
        out = client.delete("/api/delete", json={"name": "dl:1b"})
        assert out.status_code == 200 and out.get_data() == b""
        assert not target.exists()
        assert "dl:1b" not in {m["name"] for m in client.get("/api/tags").get_json()["models"]}
        assert not any(m["name"] == "dl:1b" for m in client.get("/api/ps").get_json()["models"])
        gone = client.post("/api/generate", json={"model": "dl:1b", "prompt": "x"})
        assert gone.status_code == 404 and gone.get_json()["error"].startswith(
            "model 'dl:1b' not found")
    finally:
        local_file.unlink()


def test_line_separators_are_escaped():
    from bridge.http.web import dumps

    line = dumps({"response": "a\u2028b\u2029c\x85d"})
    assert "\u2028" not in line and "\u2029" not in line and "\x85" not in line
    assert json.loads(line)["response"] == "a\u2028b\u2029c\x85d"


def test_debug_render_only_answers_the_rendered_prompt_and_generates_nothing(client):
    """Ollama's `_debug_render_only`: the template's output in `_debug_info`, no generation."""
    chat = client.post("/api/chat", json={
        "model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi there"}],
        "_debug_render_only": True})  # streamed or not: one object
    assert chat.status_code == 200 and chat.headers["Content-Type"].startswith("application/json")
    body = chat.get_json()
    rendered = body["_debug_info"]["rendered_template"]
    assert rendered == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert body["done"] is False and body["message"] == {"role": "", "content": ""}
    assert "eval_count" not in body and "image_count" not in body["_debug_info"]
    gen = client.post("/api/generate", json={"model": "tiny", "prompt": "Hello", "stream": False,
                                             "system": "S", "_debug_render_only": True})
    assert gen.get_json()["_debug_info"]["rendered_template"] == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert gen.get_json()["response"] == ""
    raw = client.post("/api/generate", json={"model": "tiny", "prompt": "As is", "raw": True,
                                             "_debug_render_only": True})
    assert raw.get_json()["_debug_info"]["rendered_template"] == "As is"
