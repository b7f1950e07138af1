"""A client that leaves a streaming /api/pull stops the download (issue 11.11): the file stops
growing far short of its size, and a later pull finishes. A real server process and
a slow local hub process (tests/fakehub.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bridge.testing import build_tiny_model

from .conftest import free_port, start_server, stop_server, write_mappings

REPO = "mlx-community/Big-Pull"
FAKEHUB = Path(__file__).with_name("fakehub.py")
PADDING = 48 * 1024 * 1024  # huggingface_hub reports progress (and can stop) every 10 MiB


@pytest.fixture(scope="module")
def slow_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    build_tiny_model(root / REPO)
    (root / REPO / "padding.safetensors").write_bytes(b"\0" * PADDING)
    port = free_port()
    # 5 ms per 64 KiB: the padding takes about 4 s to serve
    proc = subprocess.Popen([sys.executable, str(FAKEHUB), str(root), str(port), "0.005"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url + "/api/models/x/y", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def downloaded(partial: Path) -> int:
    """Bytes of the padding on disk so far (finished or still .incomplete)."""
    return sum(p.stat().st_size for p in partial.rglob("*")
               if p.is_file() and p.stat().st_size > 1 << 20)


@pytest.mark.slow
def test_a_client_leaving_a_pull_stops_its_download(slow_hub, tmp_path):
    home = tmp_path / "home"
    mappings = write_mappings(tmp_path / "m.yaml", {"bigpull": {"mlx": REPO}})
    proc, url = start_server(["--home", str(home), "--mappings", str(mappings),
                              "--upstream", "none"],
                             env={"HF_ENDPOINT": slow_hub, "HF_HUB_OFFLINE": "0"})
    try:
        with requests.post(url + "/api/pull", json={"model": "bigpull"}, stream=True,
                           timeout=60) as r:
            for line in r.iter_lines():
                event = json.loads(line)
                if event.get("total") == PADDING and event.get("completed"):
                    break  # the padding is downloading: hang up
        partial = home / "models" / "mlx-community" / ".Big-Pull.partial"
        sizes = [downloaded(partial)]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (len(sizes) < 4 or sizes[-1] != sizes[-4]):
            time.sleep(0.5)  # until it has not grown for 1.5 s
            sizes.append(downloaded(partial))
        # huggingface-hub deletes its unfinished temp file when the download stops
        assert max(sizes) < PADDING, "the download ran to the end after the client left"
        assert not (partial / "padding.safetensors").exists()
        assert not (home / "models" / REPO).exists()

        again = requests.post(url + "/api/pull", json={"model": "bigpull", "stream": False},
                              timeout=120)
        assert again.json() == {"status": "success"}  # the repo's lock was released
        assert (home / "models" / REPO / "padding.safetensors").stat().st_size == PADDING
    finally:
        stop_server(proc)
