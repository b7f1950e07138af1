"""Real remote engines for the remote-target tests: an `mlx_lm.server` process (the OpenAI
protocol, as the seeds' configuration guide runs it on port 8080) on the tiny model.

`hf_cache_with` puts a model directory into a Hugging Face cache under a repo id, so the server
is started with the seeds' own `--model mlx-community/...` and answers requests naming it,
offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from .helpers import free_port, stop_server

SEED_REPO = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
_COMMIT = "0" * 40


def hf_cache_with(hf_home: Path, repo_id: str, model_dir: Path) -> Path:
    """A Hugging Face cache (HF_HOME) whose `repo_id` snapshot is a copy of `model_dir`."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    for f in model_dir.iterdir():
        shutil.copy(f, snapshot / f.name)
    return hf_home


def start_mlx_lm_server(model: str, log_dir: Path, env: dict[str, str] | None = None,
                        timeout: float = 90) -> tuple[subprocess.Popen, str, int]:
    """`python -m mlx_lm.server --model <model> --port <free>`; waits for its /health."""
    port = free_port()
    log = open(log_dir / f"mlx_lm_server-{port}.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", model, "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlx_lm.server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, port
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("mlx_lm.server did not start in time")
