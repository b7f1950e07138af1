"""Tests for bridge.config (host table mirrors Ollama's envconfig/config_test.go TestHost)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

import bridge
from bridge.config import (
    DEFAULT_MAX_LOADED_MODELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_NUM_PARALLEL,
    DEFAULT_THREADS,
    Config,
    default_mappings_path,
    load_config,
)
from bridge.hosts import HostSpec, parse_host

# raw value, Ollama's Host().String() (with ":port" -> our all-interfaces 0.0.0.0)
OLLAMA_HOST_TABLE = [
    ("", "http", "127.0.0.1", 11434, ""),
    ("1.2.3.4", "http", "1.2.3.4", 11434, ""),
    (":1234", "http", "0.0.0.0", 1234, ""),
    ("1.2.3.4:1234", "http", "1.2.3.4", 1234, ""),
    ("example.com", "http", "example.com", 11434, ""),
    ("example.com:1234", "http", "example.com", 1234, ""),
    (":0", "http", "0.0.0.0", 0, ""),
    (":66000", "http", "0.0.0.0", 11434, ""),
    (":-1", "http", "0.0.0.0", 11434, ""),
    ("[::1]", "http", "::1", 11434, ""),
    ("[::]", "http", "::", 11434, ""),
    ("::1", "http", "::1", 11434, ""),
    ("[::1]:1337", "http", "::1", 1337, ""),
    (" 1.2.3.4 ", "http", "1.2.3.4", 11434, ""),
    ('"1.2.3.4"', "http", "1.2.3.4", 11434, ""),
    (' " 1.2.3.4 " ', "http", "1.2.3.4", 11434, ""),
    ("'1.2.3.4'", "http", "1.2.3.4", 11434, ""),
    ("http://1.2.3.4", "http", "1.2.3.4", 80, ""),
    ("http://1.2.3.4:4321", "http", "1.2.3.4", 4321, ""),
    ("https://1.2.3.4", "https", "1.2.3.4", 443, ""),
    ("https://1.2.3.4:4321", "https", "1.2.3.4", 4321, ""),
    ("https://example.com/ollama", "https", "example.com", 443, "/ollama"),
    ("ollama.com", "https", "ollama.com", 443, ""),
    # extra cases
    ("0.0.0.0", "http", "0.0.0.0", 11434, ""),
    ("0.0.0.0:1234", "http", "0.0.0.0", 1234, ""),
    ("localhost", "http", "localhost", 11434, ""),
    ("localhost:8080", "http", "localhost", 8080, ""),
    ("host:abc", "http", "host", 11434, ""),
    ("host:", "http", "host", 11434, ""),
    ("host:+80", "http", "host", 80, ""),
    ("host:65535", "http", "host", 65535, ""),
    ("host:65536", "http", "host", 11434, ""),
    ("https://h:99999", "https", "h", 443, ""),
    ("http://h:abc", "http", "h", 80, ""),
    ("http://h", "http", "h", 80, ""),
    ("https://h", "https", "h", 443, ""),
    ("https://example.com/", "https", "example.com", 443, ""),
    ("https://example.com:8443/a/b/", "https", "example.com", 8443, "/a/b/"),
    ("http://[::1]:1337/x", "http", "::1", 1337, "/x"),
    ("[0:0::1]", "http", "::1", 11434, ""),
    ("::ffff:1.2.3.4", "http", "1.2.3.4", 11434, ""),
    ("\t127.0.0.1:5000\n", "http", "127.0.0.1", 5000, ""),
    ("ftp://h", "ftp", "h", 11434, ""),
]


@pytest.mark.parametrize(("raw", "scheme", "host", "port", "path"), OLLAMA_HOST_TABLE)
def test_parse_host_table(raw: str, scheme: str, host: str, port: int, path: str) -> None:
    assert parse_host(raw) == HostSpec(scheme, host, port, path)


def test_parse_host_none_is_default() -> None:
    assert parse_host(None) == parse_host("") == HostSpec("http", "127.0.0.1", 11434, "")


@pytest.mark.parametrize(
    ("raw", "default_port", "port"),
    [("", 8080, 8080), ("h", 1, 1), ("h:2", 1, 2), (":bad", 7, 7), ("http://h", 9, 80)],
)
def test_parse_host_default_port(raw: str, default_port: int, port: int) -> None:
    assert parse_host(raw, default_port).port == port


@pytest.mark.parametrize(
    ("raw", "bind"),
    [
        ("", "127.0.0.1:11434"),
        (":1234", "0.0.0.0:1234"),
        ("0.0.0.0", "0.0.0.0:11434"),
        ("[::1]:1337", "[::1]:1337"),
        ("::1", "[::1]:11434"),
        ("[::]", "[::]:11434"),
        ("example.com:80", "example.com:80"),
        ("https://example.com/ollama", "example.com:443"),
    ],
)
def test_bind(raw: str, bind: str) -> None:
    assert parse_host(raw).bind == bind


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        (":1234", "http://127.0.0.1:1234"),
        ("[::]", "http://[::1]:11434"),
        ("[::]:99", "http://[::1]:99"),
        ("::", "http://[::1]:11434"),
        ("[::1]:1337", "http://[::1]:1337"),
        ("1.2.3.4", "http://1.2.3.4:11434"),
        ("example.com", "http://example.com:11434"),
        ("https://example.com/ollama", "https://example.com:443/ollama"),
        ("http://0.0.0.0/p", "http://127.0.0.1:80/p"),
        ("ollama.com", "https://ollama.com:443"),
    ],
)
def test_url_is_connectable(raw: str, url: str) -> None:
    assert parse_host(raw).url == url


def test_url_for_manual_empty_host() -> None:
    spec = HostSpec("http", "", 1234, "")
    assert spec.url == "http://127.0.0.1:1234"
    assert spec.bind == "0.0.0.0:1234"


@pytest.mark.parametrize(
    ("raw", "loopback"),
    [
        ("", True),
        ("127.0.0.1:5", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("[::1]", True),
        ("::1", True),
        ("0.0.0.0", False),
        (":1234", False),
        ("[::]", False),
        ("1.2.3.4", False),
        ("example.com", False),
        ("192.168.1.2", False),
    ],
)
def test_is_loopback(raw: str, loopback: bool) -> None:
    assert parse_host(raw).is_loopback is loopback


def test_invalid_port_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.config"):
        assert parse_host(":66000").port == 11434
    assert any("invalid port" in r.getMessage() for r in caplog.records)


def test_with_port() -> None:
    spec = parse_host("[::1]:1").with_port(2)
    assert spec.bind == "[::1]:2"
    with pytest.raises(ValueError):
        spec.with_port(70000)


# --------------------------------------------------------------------------- load_config


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty state directory."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def _env(home: Path, **values: str) -> dict[str, str]:
    """An environment with MLX_BRIDGE_HOME pointing at ``home``."""
    return {"MLX_BRIDGE_HOME": str(home), **values}


def test_defaults(home: Path) -> None:
    cfg = load_config(_env(home))
    assert isinstance(cfg, Config)
    assert cfg.host == HostSpec("http", "127.0.0.1", 11434, "")
    assert cfg.mappings_path == default_mappings_path()
    assert cfg.upstream is None
    assert cfg.home == home
    assert cfg.keep_alive == 300.0
    assert cfg.max_loaded_models == DEFAULT_MAX_LOADED_MODELS == 3
    assert cfg.num_parallel == DEFAULT_NUM_PARALLEL == 8
    assert cfg.max_queue == DEFAULT_MAX_QUEUE == 512
    assert cfg.admin_token is None
    assert cfg.verbose is False
    assert cfg.models_dir == Path("~/.ollama/models").expanduser()
    assert cfg.origins == []
    assert cfg.threads == DEFAULT_THREADS == 64
    assert cfg.request_timeout == 300.0
    assert cfg.connect_timeout == 3.0


def test_empty_env_uses_default_home() -> None:
    cfg = load_config({})
    assert cfg.home == Path("~/.mlx-bridge").expanduser()


def test_default_mappings_path_is_packaged() -> None:
    assert (
        default_mappings_path()
        == Path(bridge.__file__).resolve().parent / "data" / "model_mappings.yaml"
    )


def test_reads_os_environ_when_env_is_none(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("MLX_BRIDGE_HOME", str(home))
    monkeypatch.setenv("MLX_BRIDGE_HOST", "0.0.0.0:9999")
    assert load_config().host.bind == "0.0.0.0:9999"


def test_ollama_host_is_not_the_bind_default(home: Path) -> None:
    cfg = load_config(_env(home, OLLAMA_HOST="0.0.0.0:5555"))
    assert cfg.host.bind == "127.0.0.1:11434"


@pytest.mark.parametrize(("raw", "scheme", "host", "port", "path"), OLLAMA_HOST_TABLE)
def test_env_host_uses_parse_host(
    home: Path, raw: str, scheme: str, host: str, port: int, path: str
) -> None:
    cfg = load_config(_env(home, MLX_BRIDGE_HOST=raw))
    assert cfg.host == HostSpec(scheme, host, port, path)


def test_mappings_from_env(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.yaml"
    cfg = load_config(_env(home, MLX_BRIDGE_MAPPINGS=f' "{target}" '))
    assert cfg.mappings_path == target


def test_mappings_env_expands_user(home: Path) -> None:
    cfg = load_config(_env(home, MLX_BRIDGE_MAPPINGS="~/x.yaml"))
    assert cfg.mappings_path == Path("~/x.yaml").expanduser()


def test_mappings_default_prefers_home_file(home: Path) -> None:
    user_file = home / "model_mappings.yaml"
    user_file.write_text("{}\n")
    assert load_config(_env(home)).mappings_path == user_file


def test_mappings_default_follows_home_override(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_mappings.yaml").write_text("{}\n")
    cfg = load_config(_env(home), home=other)
    assert cfg.home == other
    assert cfg.mappings_path == other / "model_mappings.yaml"


def test_home_env_expands_user() -> None:
    cfg = load_config({"MLX_BRIDGE_HOME": "~/custom-bridge"})
    assert cfg.home == Path("~/custom-bridge").expanduser()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, 300.0),
        ("", 300.0),
        ("10m", 600.0),
        ("600", 600.0),
        ("-1", -1.0),
        ("0", 0.0),
        ("'1h'", 3600.0),
        ("bogus", 300.0),
    ],
)
def test_keep_alive_env(home: Path, raw: str | None, expected: float) -> None:
    env = _env(home) if raw is None else _env(home, OLLAMA_KEEP_ALIVE=raw)
    assert load_config(env).keep_alive == expected


INT_VARS = [
    ("OLLAMA_MAX_LOADED_MODELS", "max_loaded_models", DEFAULT_MAX_LOADED_MODELS),
    ("OLLAMA_NUM_PARALLEL", "num_parallel", DEFAULT_NUM_PARALLEL),
    ("OLLAMA_MAX_QUEUE", "max_queue", DEFAULT_MAX_QUEUE),
    ("MLX_BRIDGE_THREADS", "threads", DEFAULT_THREADS),
]


@pytest.mark.parametrize(("var", "attr", "default"), INT_VARS)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [("7", 7), (" 7 ", 7), ('"7"', 7), ("'12'", 12), ("0", None), ("", None), ("  ", None)],
)
def test_int_env_values(
    home: Path, var: str, attr: str, default: int, raw: str, expected: int | None
) -> None:
    cfg = load_config(_env(home, **{var: raw}))
    assert getattr(cfg, attr) == (default if expected is None else expected)


@pytest.mark.parametrize(("var", "attr", "default"), INT_VARS)
@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "3x", "+", "٣"])
def test_int_env_invalid_warns(
    home: Path,
    caplog: pytest.LogCaptureFixture,
    var: str,
    attr: str,
    default: int,
    raw: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.config"):
        cfg = load_config(_env(home, **{var: raw}))
    assert getattr(cfg, attr) == default
    assert any(var in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("env", "verbose"),
    [
        ({}, False),
        ({"MLX_BRIDGE_VERBOSE": "1"}, True),
        ({"MLX_BRIDGE_VERBOSE": "true"}, True),
        ({"MLX_BRIDGE_VERBOSE": "TRUE"}, True),
        ({"MLX_BRIDGE_VERBOSE": "yes"}, True),
        ({"MLX_BRIDGE_VERBOSE": "0"}, False),
        ({"MLX_BRIDGE_VERBOSE": "false"}, False),
        ({"MLX_BRIDGE_VERBOSE": ""}, False),
        ({"MLX_BRIDGE_VERBOSE": "nope"}, False),
        ({"OLLAMA_DEBUG": "1"}, True),
        ({"OLLAMA_DEBUG": "true"}, True),
        ({"OLLAMA_DEBUG": "2"}, True),
        ({"OLLAMA_DEBUG": "'1'"}, True),
        ({"OLLAMA_DEBUG": "0"}, False),
        ({"OLLAMA_DEBUG": "false"}, False),
        ({"MLX_BRIDGE_VERBOSE": "0", "OLLAMA_DEBUG": "1"}, True),
    ],
)
def test_verbose_env(home: Path, env: dict[str, str], verbose: bool) -> None:
    assert load_config(_env(home, **env)).verbose is verbose


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("", []),
        ("http://a.com", ["http://a.com"]),
        (" http://a.com , chrome-extension://* ", ["http://a.com", "chrome-extension://*"]),
        ("a,,b,", ["a", "b"]),
        ('"a,b"', ["a", "b"]),
    ],
)
def test_origins_env(home: Path, raw: str, origins: list[str]) -> None:
    assert load_config(_env(home, OLLAMA_ORIGINS=raw)).origins == origins


def test_string_env_values(home: Path, tmp_path: Path) -> None:
    cfg = load_config(
        _env(
            home,
            MLX_BRIDGE_UPSTREAM=" 'http://127.0.0.1:11435' ",
            MLX_BRIDGE_ADMIN_TOKEN='"s3cret"',
            OLLAMA_MODELS=str(tmp_path / "models"),
        )
    )
    assert cfg.upstream == "http://127.0.0.1:11435"
    assert cfg.admin_token == "s3cret"
    assert cfg.models_dir == tmp_path / "models"


@pytest.mark.parametrize("var", ["MLX_BRIDGE_UPSTREAM", "MLX_BRIDGE_ADMIN_TOKEN"])
def test_blank_string_env_is_unset(home: Path, var: str) -> None:
    cfg = load_config(_env(home, **{var: "  "}))
    assert cfg.upstream is None
    assert cfg.admin_token is None


def test_models_dir_expands_user(home: Path) -> None:
    cfg = load_config(_env(home, OLLAMA_MODELS="~/m"))
    assert cfg.models_dir == Path("~/m").expanduser()


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("env_host", "overrides", "bind"),
    [
        (None, {"host": "0.0.0.0"}, "0.0.0.0:11434"),
        (None, {"port": 8080}, "127.0.0.1:8080"),
        (None, {"host": "[::1]", "port": 1337}, "[::1]:1337"),
        ("0.0.0.0:1", {"port": 2}, "0.0.0.0:2"),
        ("0.0.0.0:1", {"host": "10.0.0.1:3"}, "10.0.0.1:3"),
        ("0.0.0.0:1", {"host": None, "port": None}, "0.0.0.0:1"),
        (None, {"host": HostSpec("http", "::", 5, "")}, "[::]:5"),
    ],
)
def test_host_overrides(
    home: Path, env_host: str | None, overrides: dict[str, object], bind: str
) -> None:
    env = _env(home) if env_host is None else _env(home, MLX_BRIDGE_HOST=env_host)
    assert load_config(env, **overrides).host.bind == bind


def test_overrides_replace_env(home: Path, tmp_path: Path) -> None:
    env = _env(
        home,
        MLX_BRIDGE_UPSTREAM="http://env:1",
        MLX_BRIDGE_MAPPINGS=str(tmp_path / "env.yaml"),
        MLX_BRIDGE_VERBOSE="0",
    )
    cfg = load_config(
        env,
        upstream="http://cli:2",
        mappings_path=str(tmp_path / "cli.yaml"),
        verbose=True,
    )
    assert cfg.upstream == "http://cli:2"
    assert cfg.mappings_path == tmp_path / "cli.yaml"
    assert cfg.verbose is True


def test_none_overrides_are_ignored(home: Path) -> None:
    env = _env(home, MLX_BRIDGE_UPSTREAM="http://env:1", MLX_BRIDGE_VERBOSE="1")
    cfg = load_config(env, upstream=None, verbose=None, mappings_path=None, home=None)
    assert cfg.upstream == "http://env:1"
    assert cfg.verbose is True
    assert cfg.home == home


def test_verbose_false_override_wins(home: Path) -> None:
    assert load_config(_env(home, OLLAMA_DEBUG="1"), verbose=False).verbose is False


def test_field_overrides(home: Path) -> None:
    cfg = load_config(_env(home), threads=8, keep_alive=-1.0, models_dir="~/mm")
    assert cfg.threads == 8
    assert cfg.keep_alive == -1.0
    assert cfg.models_dir == Path("~/mm").expanduser()


def test_unknown_override_rejected(home: Path) -> None:
    with pytest.raises(TypeError, match="bogus"):
        load_config(_env(home), bogus=1)


def test_bad_port_override_rejected(home: Path) -> None:
    with pytest.raises(ValueError):
        load_config(_env(home), port=70000)


def test_configs_are_independent(home: Path) -> None:
    a = load_config(_env(home))
    b = load_config(_env(home))
    a.origins.append("x")
    assert b.origins == []


def test_no_heavy_imports() -> None:
    code = (
        "import sys, bridge.config, bridge.wire.names, bridge.wire.durations; "
        "bad = [m for m in ('flask', 'mlx', 'mlx_lm', 'requests') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
