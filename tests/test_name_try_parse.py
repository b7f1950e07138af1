"""ModelName.try_parse: the one way to ask "valid name or None" (no try/except at call sites)."""

from __future__ import annotations

import pytest

from bridge.wire.names import ModelName
from bridge.wire.openai_out import model_object


@pytest.mark.parametrize("raw", ["llama3", "Qwen2.5-Coder:7B", "hf.co/user/repo:Q4_K_M"])
def test_try_parse_valid_equals_parse(raw: str) -> None:
    assert ModelName.try_parse(raw) == ModelName.parse(raw)


@pytest.mark.parametrize("raw", ["", "../../etc", "/abs", "a b", "a/b/c/d", "x:y:z", "ftp://h/n/m"])
def test_try_parse_invalid_is_none(raw: str) -> None:
    assert ModelName.try_parse(raw) is None


def test_model_object_owner_falls_back_for_invalid_name() -> None:
    assert model_object({"model": "user/m:1"})["owned_by"] == "user"
    assert model_object({"model": "../bad"})["owned_by"] == "library"


def test_v1_model_lookup_404_for_invalid_and_unknown(app) -> None:
    client = app.test_client()
    for name in ("..%2Fetc", "no-such-model:1"):
        resp = client.get(f"/v1/models/{name}")
        assert resp.status_code == 404, resp.data
        assert resp.get_json()["error"]["type"] == "not_found_error"
