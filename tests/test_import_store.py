"""Import from an Ollama store laid out as Ollama lays it out (manifests + sha256- blobs), then
serve, list and delete the imported model; the store itself is never written. What the manifest
knew besides the weights comes along: its template (converted to Jinja), system prompt and params
(the model's default options), and /api/show shows them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.app import create_app
from bridge.config import load_config
from bridge.engine.prompts import encode
from bridge.importer import ImportFailed, import_model
from bridge.importer.chat_templates import render
from bridge.importer.run import slug
from bridge.routing.registry import Registry
from bridge.testing import build_tiny_model

from .gguf_fixtures import bpe_tokenizer_meta, random_weights, write_gguf

CFG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
       "max_position_embeddings": 512}
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% "
            "endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _blob(root: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _manifest(root: Path, parts: tuple[str, str, str, str], layers: list[dict]) -> None:
    config = _blob(root, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode(),
                   "application/vnd.docker.container.image.v1+json")
    path = root / "manifests" / Path(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schemaVersion": 2,
                                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                "config": config, "layers": layers}))


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("gguf")
    tok = bpe_tokenizer_meta(build_tiny_model(tmp / "tok") / "tokenizer.json")
    cfg = {**CFG, "vocab_size": len(tok["tokens"])}
    return write_gguf(tmp / "m.gguf", "llama", cfg, random_weights("llama", cfg), tok, "Q8_0",
                      TEMPLATE).read_bytes()


@pytest.fixture(scope="module")
def store(tmp_path_factory, gguf_bytes) -> Path:
    """~/.ollama/models with a GGUF model, an hf.co model, an MLX (per-tensor) model, a broken
    one."""
    tmp = tmp_path_factory.mktemp("ollama")
    root = tmp / "models"
    (root / "blobs").mkdir(parents=True)
    model = _blob(root, gguf_bytes, "application/vnd.ollama.image.model")
    template = _blob(root, b"{{ .Prompt }}", "application/vnd.ollama.image.template")
    params = _blob(root, b'{"stop":["<|im_end|>"]}', "application/vnd.ollama.image.params")
    _manifest(root, ("registry.ollama.ai", "library", "tinyllama", "q8"), [model, template, params])
    _manifest(root, ("hf.co", "someone", "Tiny-GGUF", "Q8_0"), [model])
    tensor = _blob(root, b"\0" * 16, "application/vnd.ollama.image.tensor")
    _manifest(root, ("registry.ollama.ai", "library", "mlxonly", "latest"), [tensor])
    missing = {**model, "digest": "sha256:" + "0" * 64}
    _manifest(root, ("registry.ollama.ai", "library", "broken", "latest"), [missing])
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size,
                                       p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_import_by_ollama_name_reads_the_model_blob_and_never_writes_the_store(store, tmp_path):
    before = _snapshot(store)
    result = import_model("tinyllama:q8", tmp_path / "home", ollama_root=store)
    assert result.name == "tinyllama:q8"
    assert result.path == tmp_path / "home" / "models" / "imported" / slug("tinyllama:q8")
    provenance = json.loads((result.path / "mlx_bridge_import.json").read_text())
    assert (provenance["source"] == "ollama:tinyllama:q8"
            and provenance["ollama_digest"].startswith("sha256:"))
    # the manifest's template `{{ .Prompt }}` and stop param, not the GGUF's ChatML template
    template = json.loads((result.path / "tokenizer_config.json").read_text())["chat_template"]
    assert render(template, [{"role": "user", "content": "hi"}]) == "hi"
    assert _snapshot(store) == before
    local = yaml.safe_load((tmp_path / "home" / "local_models.yaml").read_text())
    assert local == {"models": {"tinyllama:q8": {"mlx": f"imported/{slug('tinyllama:q8')}",
                                                 "backend": "mlx",
                                                 "options": {"stop": ["<|im_end|>"]}}}}


def test_names_resolve_like_ollama_case_and_hosts(store, tmp_path):
    assert import_model("TinyLlama:Q8", tmp_path / "h1", ollama_root=store).name == "TinyLlama:Q8"
    assert import_model("hf.co/someone/Tiny-GGUF:Q8_0", tmp_path / "h2", ollama_root=store,
                        name="tiny-hf").name == "tiny-hf:latest"


@pytest.mark.parametrize(("name", "message"), [
    ("mlxonly", "MLX \\(safetensors\\) model stored per tensor"),
    ("broken", "missing from the Ollama store"),
    ("nothere:7b", "neither a GGUF file nor a model in the Ollama store.*tinyllama:q8"),
])
def test_store_problems_are_clear_errors(store, tmp_path, name, message):
    with pytest.raises(ImportFailed, match=message):
        import_model(name, tmp_path / "home", ollama_root=store)
    assert not (tmp_path / "home" / "local_models.yaml").exists()


def test_cli_import_serve_list_and_delete(store, tmp_path):
    home = tmp_path / "home"
    before = _snapshot(store)
    env = {**os.environ, "OLLAMA_MODELS": str(store), "MLX_BRIDGE_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "bridge", "import", "tinyllama:q8",
                           "--name", "mine:v1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # "converting tensors" comes from the progress bar
    assert "imported 'mine:v1'" in done.stdout and "converting tensors" in done.stderr

    config = load_config({}, mappings_path=None, home=home)
    app = create_app(config)
    app.extensions["bridge"].start()
    try:
        client = app.test_client()
        tags = {m["name"]: m for m in client.get("/api/tags").get_json()["models"]}
        entry = tags["mine:v1"]
        assert len(entry["digest"]) == 64 and entry["size"] > 0
        assert (entry["details"]["family"] == "llama"
                and entry["details"]["quantization_level"] == "F32")
        assert entry["details"]["parameter_size"].endswith("K")
        show = client.post("/api/show", json={"model": "mine:v1"}).get_json()
        assert (show["template"] == "{{ .Prompt }}"
                and show["model_info"]["general.architecture"] == "llama")
        reply = client.post("/api/chat", json={"model": "mine:v1", "stream": False,
                                               "options": {"num_predict": 3},
                                               "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.get_json()["done"] is True
        assert (home / "models" / "imported" / slug("mine:v1")).is_dir()
        assert client.delete("/api/delete", json={"model": "mine:v1"}).status_code == 200
        assert not (home / "models" / "imported" / slug("mine:v1")).exists()
        assert yaml.safe_load((home / "local_models.yaml").read_text())["models"] == {}
        assert "mine:v1" not in {m["name"] for m in client.get("/api/tags").get_json()["models"]}
    finally:
        app.extensions["bridge"].stop()
    assert _snapshot(store) == before  # deleting the import never touches the Ollama store


# A model as `ollama pull` leaves it: Ollama's own template (Messages mode, tools), a SYSTEM layer
# and a params layer (one parameter MLX has no use for).
PIRATE_TEMPLATE = """{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}
<tools>
{{- range .Tools }}
{{ .Function }}
{{- end }}
</tools>
Answer with <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", \
"arguments": {{ .Function.Arguments }}}</tool_call>{{ end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""
PIRATE_SYSTEM = "You are a pirate."
PIRATE_PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.3, "num_ctx": 256,
                 "mirostat": 1}
PIRATE_PROMPT = ("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                 "<|im_start|>assistant\n")


def _store_with(root: Path, model: str, gguf: bytes, *, template: str | None = None,
                system: str | None = None, params: dict | None = None) -> Path:
    """An Ollama store holding one model with the given text layers."""
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    layers = [_blob(root, gguf, "application/vnd.ollama.image.model")]
    for text, kind in ((template, "template"), (system, "system"),
                       (json.dumps(params) if params is not None else None, "params")):
        if text is not None:
            layers.append(_blob(root, text.encode(), f"application/vnd.ollama.image.{kind}"))
    _manifest(root, ("registry.ollama.ai", "library", model, "latest"), layers)
    return root


def _app(home: Path):
    app = create_app(load_config({}, mappings_path=None, home=home, upstream="none"))
    app.extensions["bridge"].start()
    return app


def _chat(client, model: str, messages: list[dict], **options) -> dict:
    reply = client.post("/api/chat", json={"model": model, "stream": False, "messages": messages,
                                           **({"options": options} if options else {})})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return reply.get_json()


def test_template_system_and_params_come_along_and_show(gguf_bytes, tmp_path):
    root = _store_with(tmp_path / "ollama", "pirate", gguf_bytes, template=PIRATE_TEMPLATE,
                       system=PIRATE_SYSTEM, params=PIRATE_PARAMS)
    home = tmp_path / "home"
    result = import_model("pirate", home, ollama_root=root)
    entry = Registry(None, home).lookup("pirate")
    assert entry.options == {"stop": ("<|im_start|>", "<|im_end|>"), "temperature": 0.3,
                             "num_ctx": 256}
    from mlx_lm.tokenizer_utils import load

    tokenizer = load(result.path)
    hi = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(hi, tokenize=False,
                                         add_generation_prompt=True) == PIRATE_PROMPT
    # Ollama's template names it; mlx-lm parses it
    assert tokenizer.tool_call_start == "<tool_call>"
    app = _app(home)
    try:
        client = app.test_client()
        show = client.post("/api/show", json={"model": "pirate"}).get_json()
        assert show["template"] == PIRATE_TEMPLATE and show["system"] == PIRATE_SYSTEM
        assert show["parameters"].splitlines() == [
            "mirostat                       1", "num_ctx                        256",
            'stop                           "<|im_start|>"',
                                                   'stop                           "<|im_end|>"',
            "temperature                    0.3"]
        assert f'TEMPLATE """{PIRATE_TEMPLATE}"""' in show["modelfile"]
        assert 'SYSTEM """You are a pirate."""' in show["modelfile"]
        assert 'PARAMETER stop "<|im_end|>"' in show["modelfile"]
        assert "tools" in show["capabilities"]
        # the chat's prompt is the one Ollama renders: the model's SYSTEM first...
        done = _chat(client, "pirate", hi, num_predict=1)
        assert done["prompt_eval_count"] == len(encode(tokenizer, PIRATE_PROMPT))
        # ...unless the chat brings its own
        own = [{"role": "system", "content": "Be terse."}, *hi]
        done = _chat(client, "pirate", own, num_predict=1)
        assert done["prompt_eval_count"] == len(
            encode(tokenizer, PIRATE_PROMPT.replace(PIRATE_SYSTEM, "Be terse.")))
    finally:
        app.extensions["bridge"].stop()


def test_params_are_defaults_a_request_overrides(gguf_bytes, tmp_path):
    greedy = {"temperature": 0, "num_predict": 24}
    plain = _store_with(tmp_path / "a", "plain", gguf_bytes, template=PIRATE_TEMPLATE,
                        params=greedy)
    import_model("plain", tmp_path / "home", ollama_root=plain)
    app = _app(tmp_path / "home")
    try:
        client = app.test_client()
        hi = [{"role": "user", "content": "hi"}]
        full = _chat(client, "plain", hi)  # greedy and 24 tokens long by the model's params alone
        assert full["eval_count"] == 24 and full["done_reason"] == "length"
        text = full["message"]["content"]
        stop = text[len(text) // 2:len(text) // 2 + 3]  # (the random tiny model writes newlines)
        stopping = _store_with(tmp_path / "b", "stopping", gguf_bytes, template=PIRATE_TEMPLATE,
                               params={**greedy, "stop": [stop]})
        import_model("stopping", tmp_path / "home", ollama_root=stopping)
        cut = _chat(client, "stopping", hi)
        assert cut["message"]["content"] == text[:text.index(stop)] and cut["done_reason"] == "stop"
        assert cut["eval_count"] < full["eval_count"]
        again = _chat(client, "stopping", hi, stop=[], num_predict=5)  # the request's own win
        assert again["message"]["content"] == text[:5] and again["done_reason"] == "length"
    finally:
        app.extensions["bridge"].stop()


def test_a_template_beyond_the_translation_keeps_the_ggufs_with_the_system(gguf_bytes, tmp_path):
    odd = '{{ template "x" . }}'
    root = _store_with(tmp_path / "ollama", "odd", gguf_bytes, template=odd, system=PIRATE_SYSTEM)
    result = import_model("odd", tmp_path / "home", ollama_root=root)
    notes = json.loads((result.path / "mlx_bridge_import.json").read_text())["ollama"]
    assert notes["template_converted"] is False and "template" in notes["template_error"]
    template = json.loads((result.path / "tokenizer_config.json").read_text())["chat_template"]
    assert render(template, [{"role": "user", "content": "hi"}]) == (
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    app = _app(tmp_path / "home")
    try:
        show = app.test_client().post("/api/show", json={"model": "odd"}).get_json()
        # what really renders
        assert show["template"] == template and show["system"] == PIRATE_SYSTEM
    finally:
        app.extensions["bridge"].stop()


def test_malformed_params_layer_is_a_clear_error(gguf_bytes, tmp_path):
    root = tmp_path / "ollama"
    (root / "blobs").mkdir(parents=True)
    layers = [_blob(root, gguf_bytes, "application/vnd.ollama.image.model"),
              _blob(root, b"{not json", "application/vnd.ollama.image.params")]
    _manifest(root, ("registry.ollama.ai", "library", "bad", "latest"), layers)
    with pytest.raises(ImportFailed, match="params layer of 'bad:latest' is not JSON"):
        import_model("bad", tmp_path / "home", ollama_root=root)
