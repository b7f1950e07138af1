"""Fuzzing of the gateway endpoints and of the relay of unknown paths: never a 5xx, errors in shape.

The gateway runs on the in-process app (real tiny MLX model, no upstream); the relay on an
in-process app whose default upstream is a real echo server process (tests/relay_upstream.py).
Same properties and case counts policy as tests/test_fuzz.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.app import create_app
from bridge.config import load_config

from . import relay_upstream
from .conftest import free_port
from .fuzz_bodies import GARBAGE, MODELS, encoded, generate_body
from .test_fuzz import QUERY, check, fuzz

SEGMENT = st.one_of(MODELS, st.text(max_size=15), st.sampled_from(
    ["tiny", "tiny:latest", "..", "%00", "%2e%2e", "a/b/c/d", "x" * 300, "hf.co/u/r:Q4"])
).map(lambda s: quote(s, safe="/%:@"))
GATEWAY_PATH = st.one_of(
    st.builds("/api/models/{}".format, SEGMENT), st.builds("/api/mlx/load/{}".format, SEGMENT),
    st.sampled_from(["/api/models", "/api/mlx/models", "/api/health", "/api/mlx/load/tiny",
                     "/api/models/tiny", "/api/mlx/load/", "/api/mlx"]))
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
LOAD_BODY = st.one_of(st.just(b""), GARBAGE, encoded(st.fixed_dictionaries({}, optional={
    "keep_alive": st.one_of(st.integers(-5, 5), st.sampled_from(["1m", "0", "-1s", "300", "x"]),
                            st.booleans(), st.none(), st.floats(allow_nan=True)),
    "other": st.text(max_size=5)})))


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@fuzz(300)
@given(method=METHODS, path=GATEWAY_PATH, query=QUERY, raw=LOAD_BODY)
def test_fuzz_gateway(client, method, path, query, raw):
    resp = client.open(path, method=method, query_string=query, data=raw,
                       content_type="application/json")
    check(resp, method, path, "gateway")


@pytest.fixture(scope="module")
def relay_client(mappings_file, tmp_path_factory) -> Iterator:
    proc: subprocess.Popen
    proc, url = relay_upstream.start(free_port(), "fuzz")
    home = tmp_path_factory.mktemp("fuzz-relay")
    config = load_config({}, mappings_path=mappings_file, home=home, upstream=url)
    app = create_app(config)  # the engine is never started: nothing relayed reaches it
    yield app.test_client()
    app.extensions["bridge"].stop()
    proc.terminate()
    proc.wait(10)


UNKNOWN_PATH = st.one_of(
    st.builds("/api/x/{}".format, SEGMENT), st.builds("/v1/x/{}".format, SEGMENT),
    st.builds("/v1/messages/batches/{}".format, SEGMENT),
    st.sampled_from(["/api/status", "/api/me", "/v1/audio/transcriptions", "/teapot", "/x"]))
RELAY_BODY = st.one_of(st.just(b""), GARBAGE, encoded(generate_body()),
                       encoded(st.fixed_dictionaries({"model": st.one_of(MODELS, st.integers(),
                                                                         st.none())})))


@fuzz(300)
@given(method=METHODS, path=UNKNOWN_PATH, query=QUERY, raw=RELAY_BODY)
def test_fuzz_relay(relay_client, method, path, query, raw):
    resp = relay_client.open(path, method=method, query_string=query, data=raw,
                             content_type="application/json")
    check(resp, method, path, "relay")
