"""Paths the bridge does not serve reach the upstream unchanged (real processes on both sides).

The bridge runs in front of two echo upstreams (tests/relay_upstream.py): `main` is the default
upstream, `other` is named by an admin row. Nothing here is mocked.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from . import relay_upstream
from .conftest import free_port, start_server, stop_server, write_mappings

TOKEN = "relay-admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[str, str]]:
    procs: list[subprocess.Popen] = []
    urls = []
    for name in ("main", "other"):
        proc, url = relay_upstream.start(free_port(), name)
        procs.append(proc)
        urls.append(url)
    yield urls[0], urls[1]
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory, tiny_model_dir, upstreams) -> Iterator[str]:
    root = tmp_path_factory.mktemp("relay")
    mappings = write_mappings(root / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir)}},
                              upstream=upstreams[0])
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home")],
                             env={"MLX_BRIDGE_ADMIN_TOKEN": TOKEN})
    yield url
    stop_server(proc)


@pytest.fixture(autouse=True)
def _clean(upstreams) -> None:
    for url in upstreams:
        relay_upstream.reset(url)


def test_unknown_get_is_relayed(bridge, upstreams):
    resp = requests.get(bridge + "/api/status", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"cloud": {"disabled": True, "source": "main"}}
    assert [r["target"] for r in relay_upstream.records(upstreams[0])] == ["/api/status"]


def test_query_string_method_body_and_status_pass_unchanged(bridge, upstreams):
    target = "/api/user/keys/a%2Fb?x=1&y=%20z&x=2"
    for method in ("PUT", "DELETE", "PATCH"):
        resp = requests.request(method, bridge + target, data=b"raw \x00 bytes", timeout=10,
                                headers={"Authorization": "Bearer client-secret", "Cookie": "c=1"})
        assert resp.status_code == 200, resp.text
        seen = resp.json()
        assert (seen["method"], seen["target"], seen["body"]) == (method, target, "raw \x00 bytes")
        # the same header allow-list as every other forwarded request
        assert seen["authorization"] is None and seen["cookie"] is None
    teapot = requests.post(bridge + "/teapot", json={"x": 1}, timeout=10)
    assert teapot.status_code == 418 and teapot.json() == {"error": "short and stout"}
    assert "Set-Cookie" not in teapot.headers


def test_streamed_unknown_path_arrives_before_the_end(bridge):
    started = time.monotonic()
    arrivals: list[tuple[float, bytes]] = []
    beside: list[float] = []

    def version_beside() -> None:
        time.sleep(0.5)  # while the relay waits on the upstream's pause
        t0 = time.monotonic()
        assert requests.get(bridge + "/api/version", timeout=10).status_code == 200
        beside.append(time.monotonic() - t0)

    thread = threading.Thread(target=version_beside)
    thread.start()
    with requests.post(bridge + "/slow/pull", json={"name": "x"}, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            arrivals.append((time.monotonic() - started, line))
    thread.join()
    assert [line for _, line in arrivals] == [b'{"status":"first"}', b'{"status":"success"}']
    # the first line came through while the upstream was still pausing before the second
    assert arrivals[1][0] - arrivals[0][0] > relay_upstream.SLOW_PAUSE / 2, arrivals
    assert beside and beside[0] < 3.0, beside


def test_model_bearing_unknown_path_is_routed_by_model(bridge, upstreams):
    main, other = upstreams
    dead = f"http://127.0.0.1:{free_port()}"
    rows = [requests.post(bridge + "/api/llm-backends", headers=AUTH, timeout=10, json=row).json()
            for row in ({"model_name": "routed", "backend_type": "ollama", "endpoint_url": dead,
                         "priority": 9},
                        {"model_name": "routed", "backend_type": "ollama", "endpoint_url": other,
                         "priority": 1})]
    try:
        body = {"model": "routed", "input": "hello"}
        resp = requests.post(bridge + "/v1/audio/speech?fmt=mp3", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        seen = resp.json()  # the dead endpoint failed before the first byte: the next one answered
        assert (seen["upstream"], seen["model"]) == ("other", "routed")
        assert seen["target"] == "/v1/audio/speech?fmt=mp3"
        assert relay_upstream.records(main) == []
        # a name with no row goes to the default upstream
        assert requests.post(bridge + "/v1/audio/speech", json={"model": "plain"},
                             timeout=10).json()["upstream"] == "main"
        # and the request was tracked for the model like /api/chat
        comparison = requests.get(bridge + "/api/performance/comparison?model=routed", headers=AUTH,
                                  timeout=10).json()["models"]
        backends = comparison[0]["backends"]
        assert any(b["endpoint"] == other and b["ok"] >= 1 for b in backends), backends
    finally:
        for row in rows:
            requests.delete(f"{bridge}/api/llm-backends/{row['id']}", headers=AUTH, timeout=10)


def test_mlx_only_model_on_unknown_path_is_a_clear_404(bridge, upstreams):
    resp = requests.post(bridge + "/v1/audio/speech", json={"model": "tiny"}, timeout=10)
    assert resp.status_code == 404
    assert "runs on MLX here" in resp.json()["error"]["message"]
    assert relay_upstream.records(upstreams[0]) == []


def test_bridge_paths_guards_and_preflight_are_not_relayed(bridge, upstreams):
    assert requests.head(bridge + "/", timeout=5).status_code == 200
    # a known path with a wrong method stays the bridge's 405
    assert requests.get(bridge + "/api/chat", timeout=5).status_code == 405
    pre = requests.options(bridge + "/api/status", timeout=5, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "PUT"})
    assert pre.status_code == 204
    foreign = requests.get(bridge + "/api/status", headers={"Host": "evil.example"}, timeout=5)
    assert foreign.status_code == 403
    assert relay_upstream.records(upstreams[0]) == []


def test_no_upstream_keeps_the_plain_404(server):
    for method in ("GET", "PUT", "DELETE"):
        resp = requests.request(method, server + "/api/status?x=1", timeout=5)
        assert resp.status_code == 404 and resp.text == "404 page not found"


def test_upstream_not_running_keeps_the_plain_404(tmp_path, tiny_model_dir):
    dead = f"http://127.0.0.1:{free_port()}"
    mappings = write_mappings(tmp_path / "map.yaml", {"tiny": {"mlx": str(tiny_model_dir)}},
                              upstream=dead)
    proc, url = start_server(["--mappings", str(mappings), "--home", str(tmp_path / "home")])
    try:
        resp = requests.get(url + "/api/status", timeout=10)
        assert resp.status_code == 404 and resp.text == "404 page not found"
        routed = requests.post(url + "/v1/audio/speech", json={"model": "nowhere"}, timeout=10)
        assert routed.status_code == 404
        assert "is not running" in routed.json()["error"]["message"]
    finally:
        stop_server(proc)


def test_a_relayed_path_without_a_model_is_not_tracked(bridge, upstreams):
    """Relayed paths that name no model (here /api/status) are not rows of the performance
    comparison: there they showed as a model called "-"."""
    assert requests.get(bridge + "/api/status", timeout=10).status_code == 200
    assert requests.post(bridge + "/api/some-new-endpoint", json={"x": 1},
                         timeout=10).status_code == 200
    time.sleep(1.5)  # the tracker writes in the background
    rows = requests.get(bridge + "/api/performance/comparison", timeout=10).json()["models"]
    assert all(row.get("model") not in ("-", "", None) for row in rows), rows
