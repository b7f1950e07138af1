"""Memory (issue 17): a byte budget for resident models beside OLLAMA_MAX_LOADED_MODELS, a clear
error for a model that can never fit, and /api/ps sizes that count what a model really holds."""

from __future__ import annotations

import pytest

from bridge.app import create_app
from bridge.config import load_config
from bridge.engine.models import weights_bytes

from .conftest import start_server, stop_server, write_mappings

ASK = {"stream": False, "options": {"temperature": 0, "num_predict": 4}}


def test_the_budget_is_read_with_units():
    assert load_config({"MLX_BRIDGE_MAX_MODEL_BYTES": "1GiB"}).max_model_bytes == 1 << 30
    assert load_config({"MLX_BRIDGE_MAX_MODEL_BYTES": "2.5GB"}).max_model_bytes == 2_500_000_000
    assert load_config({"MLX_BRIDGE_MAX_MODEL_BYTES": "lots"}).max_model_bytes == 0
    assert load_config({}).max_model_bytes == 0


def make_app(home, maps, budget: int):
    env = {"MLX_BRIDGE_MAX_MODEL_BYTES": str(budget)}
    app = create_app(load_config(env, mappings_path=str(maps), home=str(home), upstream="none"))
    app.extensions["bridge"].start()
    return app


@pytest.fixture
def two_models(tmp_path, tiny_model_dir, base_model_dir):
    return write_mappings(tmp_path / "maps.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "tiny-base": {"mlx": str(base_model_dir), "backend": "mlx"},
    })


def resident(client) -> list[str]:
    return sorted(m["name"] for m in client.get("/api/ps").get_json()["models"])


def test_a_model_that_does_not_fit_beside_another_evicts_it(tmp_path, two_models,
                                                            tiny_model_dir):
    one = weights_bytes(str(tiny_model_dir))
    app = make_app(tmp_path / "home", two_models, int(one * 1.5))  # room for one, not two
    try:
        client = app.test_client()
        r = client.post("/api/generate", json={"model": "tiny", "prompt": "hi", **ASK})
        assert r.status_code == 200 and resident(client) == ["tiny:latest"]
        r = client.post("/api/generate", json={"model": "tiny-base", "prompt": "hi", **ASK})
        assert r.status_code == 200
        assert resident(client) == ["tiny-base:latest"]  # OLLAMA_MAX_LOADED_MODELS is 3
    finally:
        app.extensions["bridge"].stop()


def test_without_a_budget_both_stay(tmp_path, two_models):
    app = make_app(tmp_path / "home", two_models, 0)
    try:
        client = app.test_client()
        for name in ("tiny", "tiny-base"):
            client.post("/api/generate", json={"model": name, "prompt": "hi", **ASK})
        assert resident(client) == ["tiny-base:latest", "tiny:latest"]
    finally:
        app.extensions["bridge"].stop()


@pytest.fixture(scope="module")
def small_budget_server(tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("budget")
    maps = write_mappings(home / "maps.yaml", {"tiny": {"mlx": str(tiny_model_dir),
                                                         "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(maps), "--home", str(home), "--upstream", "none"],
                             env={"MLX_BRIDGE_MAX_MODEL_BYTES": "1000"})
    yield url
    stop_server(proc)


def test_a_model_bigger_than_the_budget_is_a_clear_error_before_loading(small_budget_server):
    import requests

    r = requests.post(small_budget_server + "/api/chat", timeout=30, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], **ASK})
    assert r.status_code == 500
    error = r.json()["error"]
    assert "requires more memory" in error and "MLX_BRIDGE_MAX_MODEL_BYTES" in error, error
    assert requests.get(small_budget_server + "/api/ps", timeout=5).json()["models"] == []
    assert requests.get(small_budget_server + "/api/version", timeout=5).ok


def test_ps_size_counts_the_cached_kv_and_size_vram_the_gpu_part(tmp_path, two_models,
                                                                 tiny_model_dir):
    # An app of its own: on the shared one, earlier modules' chats may fill tiny's prompt cache
    # to its budget, and a new entry then only replaces an old one.
    app = make_app(tmp_path / "home", two_models, 0)
    try:
        _ps_size_counts_the_cached_kv(app, tiny_model_dir)
    finally:
        app.extensions["bridge"].stop()


def _ps_size_counts_the_cached_kv(app, tiny_model_dir) -> None:
    client = app.test_client()
    client.post("/api/generate", json={"model": "tiny", "prompt": "", "keep_alive": 0})
    client.post("/api/generate", json={"model": "tiny", "prompt": ""})
    (before,) = [m for m in client.get("/api/ps").get_json()["models"]
                 if m["name"] == "tiny:latest"]
    client.post("/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                   **ASK})
    (after,) = [m for m in client.get("/api/ps").get_json()["models"] if m["name"] == "tiny:latest"]
    assert after["size"] > before["size"] >= weights_bytes(str(tiny_model_dir)) * 0.9
    engine = app.extensions["bridge"].local.engine
    assert after["size_vram"] == (after["size"] if engine.device == "gpu" else 0)
