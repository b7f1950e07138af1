"""POST /api/pull against a local hub server process (tests/fakehub.py, the HF API subset that
huggingface_hub uses), through a real `mlx-bridge serve`, raw HTTP, ollama-python and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ollama
import pytest
import requests

from bridge.importer import import_model
from bridge.testing import build_tiny_model

from .conftest import free_port, start_server, stop_server, write_mappings
from .gguf_fixtures import bpe_tokenizer_meta, random_weights, write_gguf

REPO = "mlx-community/Tiny-Pull"
FAKEHUB = Path(__file__).with_name("fakehub.py")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub process serving one MLX repo (plus a README the pull must skip)."""
    root = tmp_path_factory.mktemp("hub")
    build_tiny_model(root / REPO)
    (root / REPO / "README.md").write_text("# tiny\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKEHUB), str(root), str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url + "/api/models/x/y", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield url, root
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def server(hub, tmp_path_factory):
    hub_url, _ = hub
    home = tmp_path_factory.mktemp("pull-home")
    mappings = write_mappings(tmp_path_factory.mktemp("pull-cfg") / "m.yaml", {
        "tinypull": {"mlx": REPO, "backend": "mlx"},
        "ghost:1b": {"mlx": "mlx-community/Does-Not-Exist", "backend": "mlx"},
    })
    proc, url = start_server(["--home", str(home), "--mappings", str(mappings)],
                             env={"HF_ENDPOINT": hub_url, "HF_HUB_OFFLINE": "0"})
    yield url, home, mappings
    stop_server(proc)


def _lines(url: str, body: dict) -> list[dict]:
    with requests.post(url + "/api/pull", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def test_pull_streams_ollama_progress_and_the_model_is_served(server, hub):
    url, home, _ = server
    lines = _lines(url, {"name": "tinypull", "model": ""})  # what the Go CLI sends
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [line for line in lines if "digest" in line]
    weights = (hub[1] / REPO / "model.safetensors").read_bytes()
    by_digest: dict[str, list[dict]] = {}
    for line in layers:
        assert line["status"] == f"pulling {line['digest'][7:19]}" and len(line["digest"]) == 71
        by_digest.setdefault(line["digest"], []).append(line)
    weights_lines = by_digest["sha256:" + hashlib.sha256(weights).hexdigest()]
    assert "completed" not in weights_lines[0] and weights_lines[0]["total"] == len(weights)
    done = [line.get("completed", 0) for line in weights_lines]
    assert done == sorted(done) and done[-1] == len(weights)
    # config, generation config, special tokens map, tokenizer x2, weights
    assert len(by_digest) == 6
    assert all(group[-1]["completed"] == group[-1]["total"] for group in by_digest.values())

    target = home / "models" / REPO
    assert not (target / "README.md").exists() and (target / "mlx_bridge_pull.json").is_file()
    tags = {m["name"]: m for m in requests.get(url + "/api/tags", timeout=5).json()["models"]}
    assert tags["tinypull:latest"]["size"] > len(weights)
    reply = requests.post(url + "/api/generate", json={"model": "tinypull", "prompt": "Hi",
                                                       "stream": False,
                                                       "options": {"num_predict": 2}}, timeout=60)
    assert reply.status_code == 200 and reply.json()["done"] is True


def test_ollama_python_parses_every_line(server):
    url, _, _ = server
    parts = list(ollama.Client(host=url).pull("tinypull", stream=True))
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    assert any(p.digest and p.total for p in parts)
    # stream false: the last object
    assert ollama.Client(host=url).pull("tinypull").status == "success"


def test_unknown_repo_ends_the_stream_with_ollamas_error_text(server):
    url, _, _ = server
    lines = _lines(url, {"model": "ghost:1b"})
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1]["error"].startswith("pull model manifest: file does not exist")
    reply = requests.post(url + "/api/pull", json={"model": "ghost:1b", "stream": False},
                          timeout=30)
    assert reply.status_code == 500 and "file does not exist" in reply.json()["error"]
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(ollama.Client(host=url).pull("ghost:1b", stream=True))


def test_offline_hub_is_a_clear_error_line(hub, tmp_path):
    mappings = write_mappings(tmp_path / "m.yaml", {"tinypull": {"mlx": REPO}})
    proc, url = start_server(["--home", str(tmp_path / "home"), "--mappings", str(mappings)],
                             env={"HF_ENDPOINT": hub[0], "HF_HUB_OFFLINE": "1"})
    try:
        lines = _lines(url, {"model": "tinypull"})
    finally:
        stop_server(proc)
    assert lines[-1] == {"error": "pull model manifest: the Hugging Face hub is unreachable in "
                                  "offline mode (HF_HUB_OFFLINE is set)"}
    assert not (tmp_path / "home" / "models" / REPO).exists()


def test_mlx_bridge_pull_cli_shows_progress(server):
    url, _, _ = server
    port = url.rsplit(":", 1)[1]
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "MLX_BRIDGE_HOST": f"127.0.0.1:{port}"}
    done = subprocess.run([sys.executable, "-m", "bridge", "pull", "tinypull"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pulling manifest" in done.stdout and "success" in done.stdout
    failed = subprocess.run([sys.executable, "-m", "bridge", "pull", "ghost:1b"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "file does not exist" in failed.stderr


def test_imported_models_have_nothing_to_pull(server, tmp_path):
    url, home, _ = server
    tok = bpe_tokenizer_meta(build_tiny_model(tmp_path / "tok") / "tokenizer.json")
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "rms_norm_eps": 1e-5, "rope_theta": 1e4, "vocab_size": len(tok["tokens"])}
    gguf = write_gguf(tmp_path / "m.gguf", "llama", cfg, random_weights("llama", cfg), tok)
    import_model(str(gguf), home, name="local-only")
    assert _lines(url, {"model": "local-only"}) == [{"status": "pulling manifest"},
                                                    {"status": "success"}]


def test_delete_removes_the_pulled_files(server):
    url, home, _ = server
    _lines(url, {"model": "tinypull"})
    assert (home / "models" / REPO).is_dir()
    deleted = requests.delete(url + "/api/delete", json={"model": "tinypull"}, timeout=30)
    assert deleted.status_code == 200
    assert not (home / "models" / REPO).exists()
    tags = requests.get(url + "/api/tags", timeout=5).json()["models"]
    assert "tinypull:latest" not in {m["name"] for m in tags}
