"""Unit tests for bridge/routing/registry.py: mapping-file validation, name lookup, disk lookup,
reload."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from bridge.routing.registry import (
    LOCAL_MODELS_FILE,
    MappedModel,
    MappingError,
    Registry,
    parse_mappings,
    read_mapping_file,
)
from bridge.testing import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parent.parent
ABSENT_REPO = "mlx-community/Definitely-Not-Downloaded-4bit"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("reg-models") / "tiny")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the network or the user's real Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def bump_mtime(path: Path) -> None:
    """Make sure the registry sees a change even on filesystems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def parse(models: object, base: Path = Path("/base"), **top: object) -> dict[str, MappedModel]:
    return parse_mappings({"models": models, **top}, "mappings", base)[1]


# --- shape validation ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [["a", "b"], "models: x", 3, True])
def test_non_mapping_file_is_rejected(data):
    with pytest.raises(MappingError, match="YAML mapping"):
        parse_mappings(data, "mappings", Path("/base"))


def test_empty_file_is_no_models():
    assert parse_mappings(None, "mappings", Path("/base")) == (None, {})
    assert parse_mappings({}, "mappings", Path("/base")) == (None, {})


@pytest.mark.parametrize("models", [["a"], "qwen: x", 5])
def test_models_must_be_a_dict(models):
    with pytest.raises(MappingError, match="'models' must map"):
        parse(models)


def test_upstream_must_be_a_string():
    with pytest.raises(MappingError, match="upstream"):
        parse_mappings({"upstream": 11435, "models": {}}, "mappings", Path("/b"))
    upstream, _ = parse_mappings({"upstream": "http://h:1", "models": {}}, "mappings", Path("/b"))
    assert upstream == "http://h:1"


@pytest.mark.parametrize("spec", [{}, {"backend": "mlx"}, {"mlx": ""}, {"mlx": 3}, None, 7, ["x"]])
def test_missing_mlx_names_the_model(spec):
    with pytest.raises(MappingError, match=r"model 'broken:1b'.*mlx"):
        parse({"ok": "mlx-community/Ok-4bit", "broken:1b": spec})


def test_bad_backend_names_the_model():
    with pytest.raises(MappingError,
                       match=r"model 'm:7b'.*backend must be one of mlx, ollama, auto"):
        parse({"m:7b": {"mlx": "mlx-community/M-4bit", "backend": "llamacpp"}})


@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "a b", "x" * 300, "a/b/c/d", ""])
def test_bad_name_names_the_model(name):
    with pytest.raises(MappingError, match="invalid model name") as info:
        parse({name: "mlx-community/M-4bit"})
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("keep_alive", ["300", "5 minutes", True, [1], "1d"])
def test_bad_keep_alive_names_the_model(keep_alive):
    with pytest.raises(MappingError, match=r"model 'slow:1b': keep_alive"):
        parse({"slow:1b": {"mlx": "mlx-community/M-4bit", "keep_alive": keep_alive}})


def test_keep_alive_and_options_are_parsed():
    entry = parse({"m": {"mlx": "mlx-community/M-4bit", "keep_alive": "10m",
                         "options": {"temperature": 1, "stop": "END", "num_predict": 8.0,
                                     "mirostat": 2, "top_p": None}}})["m:latest"]
    assert entry.keep_alive == 600.0
    # validated like a request's options: types normalised, unknown and null keys dropped
    assert entry.options == {"temperature": 1.0, "stop": ("END",), "num_predict": 8}
    assert isinstance(entry.options["num_predict"], int)
    assert parse({"m": {"mlx": "mlx-community/M-4bit",
                        "keep_alive": -1}})["m:latest"].keep_alive == -1.0


@pytest.mark.parametrize("options", [[1], "fast", {"temperature": "hot"}, {"num_predict": 1.5},
                                     {"stop": [1, 2]}])
def test_bad_options_name_the_model(options):
    with pytest.raises(MappingError, match=r"model 'opt:1b'"):
        parse({"opt:1b": {"mlx": "mlx-community/M-4bit", "options": options}})


def test_read_mapping_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n", encoding="utf-8")
    with pytest.raises(MappingError, match="not valid YAML") as info:
        read_mapping_file(bad, "mappings")
    assert str(bad) in str(info.value)
    with pytest.raises(MappingError, match="cannot read"):
        read_mapping_file(tmp_path / "missing.yaml", "mappings")
    wrong = write_yaml(tmp_path / "wrong.yaml", {"models": {"m": {"backend": "mlx"}}})
    with pytest.raises(MappingError, match=r"wrong\.yaml: model 'm'"):
        read_mapping_file(wrong, "mappings")


# --- names and sources -----------------------------------------------------------------------


def test_names_are_normalised_to_display_form():
    entries = parse({"tiny": "mlx-community/T-4bit", "Qwen2.5-Coder:7B": "mlx-community/Q-4bit",
                     "user/model": "mlx-community/U-4bit"})
    assert set(entries) == {"tiny:latest", "qwen2.5-coder:7b", "user/model:latest"}
    assert entries["tiny:latest"].name == "tiny:latest"
    assert entries["qwen2.5-coder:7b"].name == "Qwen2.5-Coder:7B"  # display keeps the casing
    assert entries["user/model:latest"].name == "user/model:latest"


def test_string_spec_is_shorthand_for_mlx():
    entry = parse({"m": "mlx-community/M-4bit"})["m:latest"]
    assert (entry.source, entry.backend, entry.keep_alive, entry.options) == (
        "mlx-community/M-4bit", "mlx", None, {})


def test_relative_dirs_resolve_against_the_mapping_file(tmp_path):
    base = tmp_path / "cfg"
    base.mkdir()
    entries = parse({"a": "./weights/a", "b": "../shared/b", "c": "plain-dir", "d": "/abs/d",
                     "e": "~/models/e"}, base=base)
    assert entries["a:latest"].source == str((base / "weights" / "a").resolve())
    assert entries["b:latest"].source == str((tmp_path / "shared" / "b").resolve())
    assert entries["c:latest"].source == str((base / "plain-dir").resolve())
    assert entries["d:latest"].source == "/abs/d"
    assert entries["e:latest"].source == str(Path("~/models/e").expanduser())
    assert all(e.is_local_dir for e in entries.values())


def test_repo_ids_are_kept():
    entries = parse({"a": "mlx-community/Qwen2.5-0.5B-Instruct-4bit", "b": "org_1/name.v2"},
                    base=Path("/elsewhere"))
    assert entries["a:latest"].source == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert entries["b:latest"].source == "org_1/name.v2"
    assert not any(e.is_local_dir for e in entries.values())


@pytest.mark.parametrize("source", ["mlx-community/..", "org/.hidden", "org/a..b", "a/b/c"])
def test_repo_lookalikes_are_directories(tmp_path, source):
    """Nothing that could climb out of (or nest inside) the downloads dir counts as a repo id."""
    entry = parse({"m": source}, base=tmp_path)["m:latest"]
    assert entry.is_local_dir
    assert Path(entry.source).is_absolute()


def test_is_local_dir_property():
    assert MappedModel("m:latest", "/models/m").is_local_dir
    assert MappedModel("m:latest", "relative/dir/x").is_local_dir
    assert not MappedModel("m:latest", "mlx-community/M-4bit").is_local_dir


# --- Registry: lookup and disk ---------------------------------------------------------------


def make_registry(tmp_path: Path, models: dict, **top: object) -> tuple[Registry, Path]:
    mappings = write_yaml(tmp_path / "model_mappings.yaml", {"models": models, **top})
    return Registry(mappings, tmp_path / "home"), mappings


def test_lookup_is_case_insensitive_with_implied_latest(tmp_path):
    reg, _ = make_registry(tmp_path, {"tiny": "mlx-community/T-4bit",
                                      "Coder:7B": "mlx-community/C-4bit"},
                           upstream="http://127.0.0.1:11435")
    assert reg.upstream == "http://127.0.0.1:11435"
    entry = reg.lookup("tiny")
    assert entry is not None and entry.name == "tiny:latest"
    for alias in ("TINY:latest", "Tiny:LATEST", "library/tiny",
                  "registry.ollama.ai/library/tiny:latest", "tiny@sha256:" + "0" * 64):
        assert reg.lookup(alias) == entry, alias
    assert reg.lookup("coder:7b") == reg.lookup("CODER:7B") == reg.lookup("Coder:7B")
    assert reg.lookup("coder") is None  # :latest is not :7b
    assert reg.lookup("nope") is None
    for bad in ("", "../../etc", "/etc/passwd", "a b", "x" * 300):
        assert reg.lookup(bad) is None
    assert {e.name for e in reg.entries()} == {"tiny:latest", "Coder:7B"}


def test_local_dir_for_a_model_directory(tmp_path, model_dir):
    reg, _ = make_registry(tmp_path, {"tiny": {"mlx": str(model_dir)},
                                      "gone": str(tmp_path / "nothing")})
    entry = reg.lookup("tiny")
    assert entry is not None and entry.is_local_dir
    assert reg.local_dir(entry) == model_dir
    assert reg.local_dir(reg.lookup("gone")) is None
    assert not reg.owns(model_dir)  # the user's directory is never the bridge's to delete


def test_local_dir_none_for_an_absent_repo(tmp_path):
    reg, _ = make_registry(tmp_path, {"absent:7b": ABSENT_REPO})
    entry = reg.lookup("absent:7b")
    assert entry is not None and not entry.is_local_dir
    assert reg.local_dir(entry) is None


def test_repo_downloaded_into_home_is_found_and_owned(tmp_path, model_dir):
    reg, _ = make_registry(tmp_path, {"mine:1b": "mlx-community/Mine-1B-4bit"})
    target = reg.downloads_dir / "mlx-community" / "Mine-1B-4bit"
    assert reg.local_dir(reg.lookup("mine:1b")) is None
    shutil.copytree(model_dir, target)
    assert reg.local_dir(reg.lookup("mine:1b")) == target
    assert reg.owns(target)
    assert reg.owns(target / "model.safetensors")
    assert not reg.owns(tmp_path / "home")  # the state dir itself is not a download
    assert not reg.owns(reg.downloads_dir / ".." / "elsewhere")


def test_owns_does_not_follow_a_symlink_out(tmp_path, model_dir):
    reg, _ = make_registry(tmp_path, {})
    reg.downloads_dir.mkdir(parents=True)
    link = reg.downloads_dir / "link"
    link.symlink_to(model_dir)
    assert not reg.owns(link)


# --- Registry: reload ------------------------------------------------------------------------


def test_live_reload_when_the_mapping_file_changes(tmp_path):
    reg, mappings = make_registry(tmp_path, {"first": "mlx-community/First-4bit"})
    assert reg.lookup("first") is not None
    assert reg.lookup("second") is None
    write_yaml(mappings, {"models": {"first": "mlx-community/First-4bit",
                                     "second:2b": "mlx-community/Second-4bit"}})
    bump_mtime(mappings)
    entry = reg.lookup("second:2b")
    assert entry is not None and entry.source == "mlx-community/Second-4bit"
    write_yaml(mappings, {"models": {"second:2b": "mlx-community/Second-4bit"}})
    bump_mtime(mappings)
    assert reg.lookup("first") is None  # removals are picked up too


@pytest.mark.parametrize("broken", ["models: [unclosed\n", "models:\n  m: {backend: mlx}\n",
                                    "- a\n"])
def test_broken_edit_keeps_the_previous_mapping(tmp_path, broken):
    reg, mappings = make_registry(tmp_path, {"keep": "mlx-community/Keep-4bit"},
                                  upstream="http://up:1")
    mappings.write_text(broken, encoding="utf-8")
    bump_mtime(mappings)
    assert reg.lookup("keep") is not None
    assert reg.lookup("keep") is not None  # asking again is just as fine
    assert reg.upstream == "http://up:1"
    # a later good edit is picked up again
    write_yaml(mappings, {"models": {"fixed": "mlx-community/Fixed-4bit"}})
    st = mappings.stat()
    os.utime(mappings, ns=(st.st_atime_ns, st.st_mtime_ns + 4_000_000_000))
    assert reg.lookup("fixed") is not None
    assert reg.lookup("keep") is None


def test_broken_edit_is_reported_once_not_per_request(tmp_path, caplog):
    reg, mappings = make_registry(tmp_path, {"keep": "mlx-community/Keep-4bit"})
    mappings.write_text("models: 3\n", encoding="utf-8")
    bump_mtime(mappings)
    with caplog.at_level("ERROR", logger="bridge.routing.registry"):
        for _ in range(5):
            assert reg.lookup("keep") is not None
    reports = [r for r in caplog.records if r.name == "bridge.routing.registry"]
    assert len(reports) == 1 and "'models' must map" in reports[0].getMessage()


def test_deleted_mapping_file_keeps_the_previous_mapping(tmp_path):
    reg, mappings = make_registry(tmp_path, {"keep": "mlx-community/Keep-4bit"})
    mappings.unlink()
    assert reg.lookup("keep") is not None


def test_a_broken_file_at_startup_raises(tmp_path):
    mappings = tmp_path / "model_mappings.yaml"
    mappings.write_text("models: 3\n", encoding="utf-8")
    with pytest.raises(MappingError, match="'models' must map"):
        Registry(mappings, tmp_path / "home")
    with pytest.raises(MappingError, match="cannot read"):
        Registry(tmp_path / "missing.yaml", tmp_path / "home")


def test_local_models_file_is_merged_and_the_mapping_file_wins(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home / LOCAL_MODELS_FILE, {"upstream": "http://local:1", "models": {
        "pulled:1b": "mlx-community/Pulled-1B-4bit",
        "both": {"mlx": "mlx-community/From-Local-4bit", "backend": "mlx"},
    }})
    mappings = write_yaml(tmp_path / "model_mappings.yaml", {"models": {
        "both": {"mlx": "mlx-community/From-Mappings-4bit", "backend": "auto"},
        "mapped": "mlx-community/Mapped-4bit",
    }})
    reg = Registry(mappings, home)
    pulled, both = reg.lookup("PULLED:1b"), reg.lookup("both")
    assert pulled is not None and pulled.origin == "local"
    assert both is not None and (both.source, both.backend, both.origin) == (
        "mlx-community/From-Mappings-4bit", "auto", "mappings")
    assert reg.lookup("mapped") is not None
    assert reg.upstream == "http://local:1"  # the mapping file sets none
    # the local list is live too
    write_yaml(home / LOCAL_MODELS_FILE, {"models": {"later:3b": "mlx-community/Later-4bit"}})
    bump_mtime(home / LOCAL_MODELS_FILE)
    assert reg.lookup("later:3b") is not None
    assert reg.lookup("pulled:1b") is None


def test_without_a_mapping_file_only_local_models(tmp_path):
    home = tmp_path / "home"
    reg = Registry(None, home)
    assert reg.entries() == []
    home.mkdir()
    write_yaml(home / LOCAL_MODELS_FILE, {"models": {"p": "mlx-community/P-4bit"}})
    assert reg.lookup("p") is not None


# --- the shipped defaults --------------------------------------------------------------------


def test_shipped_mapping_file_parses_and_names_only_mlx_community_repos():
    path = REPO_ROOT / "model_mappings.yaml"
    upstream, entries = read_mapping_file(path, "mappings")
    assert entries, "the shipped file maps no models"
    assert upstream is None or upstream.startswith("http")
    for key, entry in entries.items():
        assert entry.source.startswith("mlx-community/"), key
        assert entry.source.count("/") == 1 and not entry.is_local_dir, key
        assert entry.backend in ("mlx", "ollama", "auto")
    # the raw file too: no relative or absolute paths hiding behind a resolved source
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["models"]
    for spec in raw.values():
        source = spec if isinstance(spec, str) else spec["mlx"]
        assert source.startswith("mlx-community/")


def test_packaged_copy_is_byte_identical():
    assert (REPO_ROOT / "model_mappings.yaml").read_bytes() == (
        REPO_ROOT / "bridge" / "data" / "model_mappings.yaml").read_bytes()
