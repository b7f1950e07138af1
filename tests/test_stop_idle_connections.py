"""A stop closes clients' idle kept-alive connections at once (as Go's http.Server.Shutdown, so
Ollama, does), instead of keeping them for gthread's 2 s stop linger: httpx, the ollama and
openai SDKs keep a pool open, and every stop (a restart, a service manager) waited for it."""

from __future__ import annotations

import time

import httpx

from .helpers import start_server, stop_server, write_mappings


def _stop_time(tmp_path, name: str, pooled: bool) -> float:
    mappings = write_mappings(tmp_path / "m.yaml", {})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / name)])
    client = httpx.Client()
    try:
        time.sleep(1.5)  # the engine thread has started MLX: both stops wait for it alike
        if pooled:
            assert client.get(url + "/api/version").status_code == 200  # stays in the pool
        began = time.monotonic()
        assert stop_server(proc) == 0
        return time.monotonic() - began
    finally:
        client.close()


def test_an_idle_pooled_connection_does_not_hold_up_a_stop(tmp_path):
    plain = _stop_time(tmp_path, "plain", pooled=False)
    pooled = _stop_time(tmp_path, "pooled", pooled=True)
    # Before: the pooled stop took 2 s longer (2.5 against 0.5 s idle).
    assert pooled - plain < 1.2, (plain, pooled)
