"""`Content-Encoding: zstd` bodies on /v1/responses (spec §3b, as Ollama; Codex compresses its
requests): decompressed within the body cap, a bad one a clear 400, a bomb a 413."""

from __future__ import annotations

import zstandard

from bridge.app import create_app
from bridge.config import load_config

from .conftest import write_mappings

ZSTD = {"Content-Type": "application/json", "Content-Encoding": "zstd"}


def _client(tmp_path, tiny_model_dir, cap: int = 0):
    maps = write_mappings(tmp_path / "maps.yaml", {"tiny": {"mlx": str(tiny_model_dir),
                                                            "backend": "mlx"}})
    env = {"MLX_BRIDGE_MAX_BODY": str(cap)} if cap else {}
    app = create_app(load_config(env, mappings_path=str(maps), home=str(tmp_path / "home"),
                                 upstream="none"))
    app.extensions["bridge"].start()
    return app


def test_a_zstd_body_is_read_as_its_json(tmp_path, tiny_model_dir):
    app = _client(tmp_path, tiny_model_dir)
    try:
        body = (b'{"model": "tiny", "input": "hi", "max_output_tokens": 3, '
                b'"temperature": 0}')
        answer = app.test_client().post("/v1/responses", data=zstandard.compress(body),
                                        headers=ZSTD)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["object"] == "response"
        assert answer.get_json()["usage"]["output_tokens"] == 3
        broken = app.test_client().post("/v1/responses", data=b"\x28\xb5\x2f\xfdnot zstd",
                                        headers=ZSTD)
        assert broken.status_code == 400
        assert broken.get_json()["error"]["message"] == "failed to decompress zstd body"
    finally:
        app.extensions["bridge"].stop()


def test_a_zstd_bomb_stops_at_the_body_cap(tmp_path, tiny_model_dir):
    app = _client(tmp_path, tiny_model_dir, cap=100_000)
    try:
        padding = b" " * 1_000_000  # 1 MB of JSON whitespace: ~40 bytes compressed
        bomb = zstandard.compress(b'{"model": "tiny", "input": "hi"}' + padding)
        assert len(bomb) < 1000
        answer = app.test_client().post("/v1/responses", data=bomb, headers=ZSTD)
        assert answer.status_code == 413
        assert "decompressed" in answer.get_json()["error"]["message"]
    finally:
        app.extensions["bridge"].stop()
