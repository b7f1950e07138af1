"""Fuzzing of the Admin UI's routes (/ui, its files, /api/ui/models, /api/ui/live): never a 5xx,
errors in shape, never a file from outside bridge/ui/. Same properties and case counts policy as
tests/test_fuzz.py, on the in-process app (real tiny MLX model, no upstream)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .fuzz_bodies import GARBAGE
from .test_fuzz import check, fuzz

SEGMENT = st.one_of(st.text(max_size=15), st.sampled_from(
    ["index.html", "js/app.js", "vendor/uPlot.min.css", "..", "../api/ui.py", "%2e%2e/app.py",
     "js/../../app.py", "%00", "/etc/passwd", "a/b/c/d", "x" * 300, "js/"])
).map(lambda s: quote(s, safe="/%:@"))
PATH = st.one_of(
    st.builds("/ui/{}".format, SEGMENT),
    st.sampled_from(["/ui", "/ui/", "/api/ui/models", "/api/ui/live", "/api/ui", "/api/ui/"]))
QUERY = st.dictionaries(st.sampled_from(["window", "step", "x"]), st.one_of(
    st.text(max_size=8), st.sampled_from(["0", "1", "5", "300", "3600", "3601", "-5", "1e3",
                                          "٣", "99999999999999999999"])), max_size=3)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@fuzz(300)
@given(method=METHODS, path=PATH, query=QUERY, raw=st.one_of(st.just(b""), GARBAGE))
def test_fuzz_ui(client, method, path, query, raw):
    resp = client.open(path, method=method, query_string=query, data=raw)
    check(resp, method, path, "ui")
    if resp.status_code == 200 and path.startswith("/ui/") and method == "GET":
        assert "Content-Security-Policy" in resp.headers
        assert not resp.get_data().startswith(b'"""'), path  # never a Python source file
