"""The admin and gateway commands of the project's seed documents, run as written (curl | jq).

A real server (no admin token: reads open, as on a fresh install) whose backend store already
holds rows, written through the same SQLite store the server reads. Each command is the seed's
text; only `localhost:11434` becomes the test server's address. The JSON shapes are also checked
with requests, so a machine without jq still tests the contract (the jq half is then skipped).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
import requests

from bridge.stats.store import DB_FILE, Store

from .conftest import free_port, start_server, stop_server, write_mappings

SEED_ROWS = [
    {"model_name": "qwen2.5-coder:7b", "backend_type": "auto", "priority": 10,
     "mlx_model": "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"},
    {"model_name": "llama3.1:70b", "backend_type": "ollama", "priority": 2,
     "endpoint_url": "http://mac-a:11434"},
    {"model_name": "mistral:7b", "backend_type": "mlx", "enabled": False,
     "mlx_model": "mlx-community/Mistral-7B-Instruct-v0.3-4bit"},
]

# (curl part, jq part, expected stdout): each command is `curl ... | jq ...` as the seeds write it
CURL = "curl -s http://localhost:11434"
SEED_COMMANDS = [
    (f"{CURL}/api/llm-backends",
     "jq -r '.[] | select(.backend_type == \"auto\") | .model_name'", "qwen2.5-coder:7b\n"),
    (f"{CURL}/api/llm-backends", "jq -r '.[] | select(.enabled) | .model_name'",
     "llama3.1:70b\nqwen2.5-coder:7b\n"),
    ("curl -s 'http://localhost:11434/api/llm-backends?enabled_only=true'", "jq length", "2\n"),
    (f"{CURL}/api/llm-backends/model/qwen2.5-coder:7b", "jq '.backend_type'", '"auto"\n'),
    (f"{CURL}/api/llm-backends/model/qwen2.5-coder:7b", "jq -r '.mlx_model'",
     "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit\n"),
    (f"{CURL}/api/llm-backends/model/tiny", "jq -r '.backend_type'", "mlx\n"),
    (f"{CURL}/api/performance/comparison", "jq -r '.models | type'", "array\n"),
    (f"{CURL}/api/models", "jq -r '.mlx[].name'", "tiny:latest\n"),
    (f"{CURL}/api/models/tiny", "jq -r '.backend'", "mlx\n"),
    (f"{CURL}/api/mlx/models", "jq -r '.models[] | select(.present) | .name'", "tiny:latest\n"),
    ("curl -s -X POST http://localhost:11434/api/mlx/load/tiny", "jq -r '.done_reason'", "load\n"),
    (f"{CURL}/api/health", "jq -r '.backends.mlx.available'", "true\n"),
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_model_dir) -> Iterator[str]:
    root = tmp_path_factory.mktemp("seed")
    home = root / "home"
    home.mkdir()
    store = Store(home / DB_FILE)
    for row in SEED_ROWS:
        store.create(row)
    store.close()
    dead_upstream = f"http://127.0.0.1:{free_port()}"
    mappings = write_mappings(root / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir)}},
                              upstream=dead_upstream)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(home)])
    yield url
    stop_server(proc)


def test_shapes_the_seed_commands_rely_on(seeded):
    rows = requests.get(seeded + "/api/llm-backends", timeout=10).json()
    assert isinstance(rows, list) and len(rows) == 3
    assert len(requests.get(seeded + "/api/llm-backends?enabled_only=true", timeout=10).json()) == 2
    row = requests.get(seeded + "/api/llm-backends/model/qwen2.5-coder:7b", timeout=10).json()
    assert (row["backend_type"], row["source"]) == ("auto", "backends")
    assert [t["backend"] for t in row["plan"]["targets"]] == ["mlx", "ollama"]
    # a disabled row does not apply; nothing else knows the model: a clear 404
    missing = requests.get(seeded + "/api/llm-backends/model/mistral:7b", timeout=10)
    assert missing.status_code == 404 and "no backend row" in missing.json()["error"]
    assert requests.get(seeded + "/api/performance/comparison", timeout=10).status_code == 200
    # writes still need a token (none is configured: refused)
    write = requests.post(seeded + "/api/llm-backends", timeout=10,
                          json={"model_name": "x", "backend_type": "mlx"})
    assert write.status_code == 403


def test_gateway_answers(seeded):
    grouped = requests.get(seeded + "/api/models", timeout=10).json()
    assert [m["name"] for m in grouped["mlx"]] == ["tiny:latest"]
    # the row sending llama3.1:70b to mac-a is listed as a remote model (issue 15)
    assert [(m["name"], m["remote_host"]) for m in grouped["ollama"]] == [
        ("llama3.1:70b", "http://mac-a:11434")]
    one = requests.get(seeded + "/api/models/tiny", timeout=10).json()
    assert one["backend"] == "mlx" and one["mlx"]["name"] == "tiny:latest"
    assert requests.get(seeded + "/api/models/nowhere", timeout=10).status_code == 404
    assert requests.get(seeded + "/api/models/a/b/c/d", timeout=10).status_code == 400
    load = requests.post(seeded + "/api/mlx/load/tiny", json={"keep_alive": "1m"}, timeout=60)
    assert load.status_code == 200 and load.json()["done_reason"] == "load"
    ps = requests.get(seeded + "/api/ps", timeout=10).json()["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"]
    listed = requests.get(seeded + "/api/mlx/models", timeout=10).json()["models"]
    assert listed[0]["loaded"] is True
    bad = requests.post(seeded + "/api/mlx/load/tiny", json={"keepalive": "1m"}, timeout=10)
    assert bad.status_code == 400 and "keepalive" in bad.json()["error"]
    not_mlx = requests.post(seeded + "/api/mlx/load/llama3.1:70b", timeout=10)
    assert not_mlx.status_code == 400 and "not by MLX" in not_mlx.json()["error"]
    health = requests.get(seeded + "/api/health", timeout=10).json()
    assert set(health["backends"]) == {"mlx", "ollama", "remote"}


@pytest.mark.skipif(shutil.which("jq") is None or shutil.which("curl") is None,
                    reason="jq and curl are needed to run the seed commands as written")
@pytest.mark.parametrize(("curl", "jq", "expected"), SEED_COMMANDS)
def test_seed_command_as_written(seeded, curl, jq, expected):
    command = f"{curl} | {jq}".replace("localhost:11434", seeded.removeprefix("http://"))
    run = subprocess.run(["bash", "-o", "pipefail", "-c", command],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected
