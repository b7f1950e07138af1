"""Import from an Ollama store laid out as Ollama lays it out (manifests + sha256- blobs), then
serve, list and delete the imported model; the store itself is never written."""

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
from bridge.importer import ImportFailed, import_model
from bridge.importer.run import slug
from bridge.testing import build_tiny_model

from .gguf_fixtures import bpe_tokenizer_meta, random_weights, write_gguf

CFG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
       "max_position_embeddings": 512}
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
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
def store(tmp_path_factory) -> Path:
    """~/.ollama/models with a GGUF model, an hf.co model, an MLX (per-tensor) model, a broken one."""
    tmp = tmp_path_factory.mktemp("ollama")
    tok = bpe_tokenizer_meta(build_tiny_model(tmp / "tok") / "tokenizer.json")
    cfg = {**CFG, "vocab_size": len(tok["tokens"])}
    gguf_bytes = write_gguf(tmp / "m.gguf", "llama", cfg, random_weights("llama", cfg), tok, "Q8_0",
                            TEMPLATE).read_bytes()
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
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_import_by_ollama_name_reads_the_model_blob_and_never_writes_the_store(store, tmp_path):
    before = _snapshot(store)
    result = import_model("tinyllama:q8", tmp_path / "home", ollama_root=store)
    assert result.name == "tinyllama:q8"
    assert result.path == tmp_path / "home" / "models" / "imported" / slug("tinyllama:q8")
    provenance = json.loads((result.path / "mlx_bridge_import.json").read_text())
    assert provenance["source"] == "ollama:tinyllama:q8" and provenance["ollama_digest"].startswith("sha256:")
    assert json.loads((result.path / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    assert _snapshot(store) == before
    local = yaml.safe_load((tmp_path / "home" / "local_models.yaml").read_text())
    assert local == {"models": {"tinyllama:q8": {"mlx": f"imported/{slug('tinyllama:q8')}",
                                                 "backend": "mlx"}}}


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
    done = subprocess.run([sys.executable, "-m", "bridge", "import", "tinyllama:q8", "--name", "mine:v1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "imported 'mine:v1'" in done.stdout and "converting tensors" in done.stderr  # the progress bar

    config = load_config({}, mappings_path=None, home=home)
    app = create_app(config)
    app.extensions["bridge"].start()
    try:
        client = app.test_client()
        tags = {m["name"]: m for m in client.get("/api/tags").get_json()["models"]}
        entry = tags["mine:v1"]
        assert len(entry["digest"]) == 64 and entry["size"] > 0
        assert entry["details"]["family"] == "llama" and entry["details"]["quantization_level"] == "F32"
        assert entry["details"]["parameter_size"].endswith("K")
        show = client.post("/api/show", json={"model": "mine:v1"}).get_json()
        assert show["template"] == TEMPLATE and show["model_info"]["general.architecture"] == "llama"
        reply = client.post("/api/chat", json={"model": "mine:v1", "stream": False, "options": {"num_predict": 3},
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
