"""A full disk, a file size limit and a read-only state dir during `mlx-bridge import` and
`/api/pull`: a clean error, nothing half-written registered, and the retry works.

How each fault is made (tmpfs, RLIMIT_FSIZE, bind mounts, chattr) is in tests/fault_util.py.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bridge.testing import build_tiny_model

from .conftest import free_port, start_server, stop_server, write_mappings
from .fault_util import (
    assert_serves,
    generate,
    grow_tmpfs,
    limit_file_size,
    read_only,
    set_file_size_limit,
    small_tmpfs,
    worker_pid,
)
from .gguf_fixtures import bpe_tokenizer_meta, random_weights, write_gguf
from .test_pull import FAKEHUB, REPO


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fault-gguf")
    tok = bpe_tokenizer_meta(build_tiny_model(root / "tok") / "tokenizer.json")
    cfg = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "rms_norm_eps": 1e-5, "rope_theta": 1e4, "vocab_size": len(tok["tokens"])}
    # ~400 KB of F32
    return write_gguf(root / "m.gguf", "llama", cfg, random_weights("llama", cfg), tok)


def run_import(gguf: Path, home: Path, name: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLX_BRIDGE_MAPPINGS": os.devnull}
    return subprocess.run([sys.executable, "-m", "bridge", "import", str(gguf), "--name", name,
                           "--home", str(home)],
                          capture_output=True, text=True, env=env, timeout=120, **kw)


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file under the state dir with its content (directories as empty entries)."""
    return {str(p.relative_to(home)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(home.rglob("*")) if not p.name.endswith(".lock")}


def assert_clean_failure(done: subprocess.CompletedProcess[str], reason: str) -> None:
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "nothing was registered" in done.stderr and reason in done.stderr, done.stderr


def test_import_onto_a_full_disk(tmp_path, gguf):
    home = tmp_path / "home"
    with small_tmpfs(home / "models", "256k"):  # a real ENOSPC halfway through the weights
        done = run_import(gguf, home, "full")
        assert_clean_failure(done, "No space left on device")
        # no work dir, no registration
        assert snapshot(home) == {"models": b"", "models/imported": b""}


def test_import_past_the_file_size_limit_keeps_the_earlier_import(tmp_path, gguf):
    home = tmp_path / "home"
    assert run_import(gguf, home, "kept").returncode == 0
    before = snapshot(home)
    done = run_import(gguf, home, "other", preexec_fn=lambda: set_file_size_limit(100_000))
    assert_clean_failure(done, "File too large")  # EFBIG: what a non-root user can provoke
    assert snapshot(home) == before


def test_import_into_a_read_only_state_dir(tmp_path, gguf):
    home = tmp_path / "home"
    home.mkdir()
    with read_only(home) as how:
        done = run_import(gguf, home, "ro")
    assert_clean_failure(done, "Read-only file system" if how == "bind mount" else "")
    assert snapshot(home) == {}


def test_import_whose_registration_fails_puts_the_old_model_back(tmp_path, gguf):
    """The weights fit but local_models.yaml cannot be written: the new copy is removed again."""
    home = tmp_path / "home"
    assert run_import(gguf, home, "kept").returncode == 0
    before = snapshot(home)
    with read_only(home, keep_children_writable=True):  # models/ writable, home itself not
        done = run_import(gguf, home, "kept")
    assert_clean_failure(done, "")
    assert snapshot(home) == before


# ---- disk full and read-only state dir: pull ------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """tests/fakehub.py serving one MLX repo of the tiny model (~400 KB of weights)."""
    root = tmp_path_factory.mktemp("fault-hub")
    build_tiny_model(root / REPO)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKEHUB), str(root), str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(url + "/api/models/x/y", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def _pull_server(tmp_path: Path, hub: str, model_dir: Path):
    mappings = write_mappings(tmp_path / "m.yaml", {"good": {"mlx": str(model_dir)},
                                                    "tinypull": {"mlx": REPO}})
    (tmp_path / "home" / "models").mkdir(parents=True)
    return start_server(["--mappings", str(mappings), "--home", str(tmp_path / "home"),
                         "--upstream", "none"],
                        env={"HF_ENDPOINT": hub, "HF_HUB_OFFLINE": "0"})


def _pull(url: str) -> list[dict]:
    with requests.post(url + "/api/pull", json={"model": "tinypull"}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line]  # never a cut stream


def assert_pull_fails(url: str, home: Path, reason: str) -> None:
    lines = _pull(url)
    assert reason in lines[-1]["error"] and REPO in lines[-1]["error"], lines[-1]
    assert not any(line.get("status") == "success" for line in lines)
    assert not (home / "models" / REPO).exists()  # only the resumable .partial dir, never the model
    assert generate(url, "tinypull").status_code == 404
    tags = requests.get(url + "/api/tags", timeout=10).json()["models"]
    assert "tinypull:latest" not in {m["name"] for m in tags}
    assert_serves(url)


def assert_pull_works(url: str) -> None:
    assert _pull(url)[-1] == {"status": "success"}
    assert_serves(url, "tinypull")


def test_pull_onto_a_full_disk_then_after_freeing_space(tmp_path, hub, tiny_model_dir):
    proc, url = _pull_server(tmp_path, hub, tiny_model_dir)
    models = tmp_path / "home" / "models"
    try:
        with small_tmpfs(models, "200k"):
            assert_pull_fails(url, tmp_path / "home", "No space left on device")
            grow_tmpfs(models, "4m")
            assert_pull_works(url)
            stop_server(proc)  # before the unmount: the server may hold files there
    finally:
        stop_server(proc)


def test_pull_past_the_file_size_limit_then_without_it(tmp_path, hub, tiny_model_dir):
    proc, url = _pull_server(tmp_path, hub, tiny_model_dir)
    try:
        worker = worker_pid(proc.pid)
        limit_file_size(worker, 100_000)  # the weights are ~400 KB: EFBIG
        assert_pull_fails(url, tmp_path / "home", "File too large")
        limit_file_size(worker, resource.RLIM_INFINITY)
        assert_pull_works(url)
    finally:
        stop_server(proc)


def test_pull_into_a_read_only_models_dir(tmp_path, hub, tiny_model_dir):
    proc, url = _pull_server(tmp_path, hub, tiny_model_dir)
    try:
        with read_only(tmp_path / "home" / "models") as how:
            reason = {"bind mount": "Read-only file system", "chattr +i": "Operation not permitted",
                      "chmod": "Permission denied"}[how]
            assert_pull_fails(url, tmp_path / "home", reason)
        assert_pull_works(url)
    finally:
        stop_server(proc)
