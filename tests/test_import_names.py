"""Import names that used to share a directory (issue 11.10): `team/coder:7b` and `team-coder:7b`
each get their own, and deleting a name never removes files another name still uses. The real
importer on tiny GGUFs, served by an in-process app with the real engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from bridge.app import create_app
from bridge.config import load_config
from bridge.importer import ImportFailed, import_model
from bridge.importer.run import slug
from bridge.testing import build_tiny_model

from .conftest import write_mappings
from .gguf_fixtures import bpe_tokenizer_meta, random_weights, write_gguf

CFG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "max_position_embeddings": 512}


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny GGUFs with different weights."""
    tmp = tmp_path_factory.mktemp("gguf")
    tok = bpe_tokenizer_meta(build_tiny_model(tmp / "tok") / "tokenizer.json")
    cfg = {**CFG, "vocab_size": len(tok["tokens"])}
    return tuple(write_gguf(tmp / f"m{seed}.gguf", "llama", cfg,
                            random_weights("llama", cfg, seed), tok)
                 for seed in (1, 2))


def serve(home: Path, mappings: Path | None = None):
    app = create_app(load_config({}, mappings_path=mappings, home=home, upstream="none"))
    app.extensions["bridge"].start()
    return app


def names(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/api/tags").get_json()["models"]}


def chat(client, model: str) -> int:
    return client.post("/api/chat", json={
        "model": model, "stream": False, "options": {"num_predict": 2},
        "messages": [{"role": "user", "content": "hi"}]}).status_code


def source_of(path: Path) -> str:
    return json.loads((path / "mlx_bridge_import.json").read_text())["source"]


def test_names_differing_only_in_separators_get_their_own_directories(ggufs, tmp_path):
    home = tmp_path / "home"
    first = import_model(str(ggufs[0]), home, name="team/coder:7b")
    second = import_model(str(ggufs[1]), home, name="team-coder:7b")
    assert first.path != second.path
    assert source_of(first.path) == str(ggufs[0].resolve())  # not replaced by the second import
    assert source_of(second.path) == str(ggufs[1].resolve())
    app = serve(home)
    try:
        client = app.test_client()
        tags = names(client)
        assert tags["team/coder:7b"]["digest"] != tags["team-coder:7b"]["digest"]
        assert client.delete("/api/delete", json={"model": "team/coder:7b"}).status_code == 200
        assert not first.path.exists() and second.path.is_dir()
        assert "team/coder:7b" not in names(client)
        assert chat(client, "team-coder:7b") == 200  # the other name still works
    finally:
        app.extensions["bridge"].stop()


def test_deleting_a_name_keeps_files_another_name_uses(ggufs, tmp_path):
    home = tmp_path / "home"
    imported = import_model(str(ggufs[0]), home, name="orig:1")
    source = f"imported/{imported.path.name}"
    mappings = write_mappings(tmp_path / "m.yaml", {"alias:1": {"mlx": source}})
    app = serve(home, mappings)
    try:
        client = app.test_client()
        assert {"orig:1", "alias:1"} <= set(names(client))
        pulled = client.post("/api/pull", json={"model": "alias:1", "stream": False})
        assert pulled.get_json() == {"status": "success"}  # nothing to download, hub untouched
        assert client.delete("/api/delete", json={"model": "orig:1"}).status_code == 200
        assert imported.path.is_dir()  # alias:1 still uses it: only the name went
        assert "orig:1" not in names(client)
        assert yaml.safe_load((home / "local_models.yaml").read_text())["models"] == {}
        assert chat(client, "alias:1") == 200
        assert client.delete("/api/delete", json={"model": "alias:1"}).status_code == 200
        assert not imported.path.exists()  # the last name using them: the files go
    finally:
        app.extensions["bridge"].stop()


def test_a_mapped_name_sharing_its_files_is_refused(ggufs, tmp_path):
    home = tmp_path / "home"
    imported = import_model(str(ggufs[0]), home, name="base:1")
    source = f"imported/{imported.path.name}"
    mappings = write_mappings(tmp_path / "m.yaml", {"one:1": {"mlx": source},
                                                    "two:1": {"mlx": source}})
    app = serve(home, mappings)
    try:
        client = app.test_client()
        refused = client.delete("/api/delete", json={"model": "one:1"})
        assert refused.status_code == 400
        assert refused.get_json()["error"].startswith(
            f"model 'one:1' shares its files ({imported.path}) with 'base:1', 'two:1'")
        assert imported.path.is_dir()
        assert chat(client, "two:1") == 200
    finally:
        app.extensions["bridge"].stop()


def test_reimport_keeps_a_directory_named_the_old_way(ggufs, tmp_path):
    home = tmp_path / "home"
    first = import_model(str(ggufs[0]), home, name="team-coder:7b")
    legacy = first.path.with_name("team-coder-7b")  # how earlier versions named it
    shutil.move(first.path, legacy)
    (home / "local_models.yaml").write_text(yaml.safe_dump(
        {"models": {"team-coder:7b": {"mlx": "imported/team-coder-7b", "backend": "mlx"}}}))
    again = import_model(str(ggufs[1]), home, name="team-coder:7b")
    assert again.path == legacy and source_of(legacy) == str(ggufs[1].resolve())
    other = import_model(str(ggufs[0]), home, name="team/coder:7b")  # a new name: a new directory
    assert other.path != legacy and source_of(legacy) == str(ggufs[1].resolve())
    assert sorted(p.name for p in legacy.parent.iterdir()) == sorted([legacy.name, other.path.name])


def test_a_directory_registered_to_another_name_is_never_taken(ggufs, tmp_path):
    home = tmp_path / "home"
    (home / "models" / "imported").mkdir(parents=True)
    taken = slug("mine:1")
    (home / "local_models.yaml").write_text(yaml.safe_dump(
        {"models": {"someone:1": {"mlx": f"imported/{taken}", "backend": "mlx"}}}))
    with pytest.raises(ImportFailed, match="already holds the model 'someone:1'"):
        import_model(str(ggufs[0]), home, name="mine:1")
