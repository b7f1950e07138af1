"""Limits: the body cap (413 before the body is read), messages and images caps, the context
window."""

from __future__ import annotations

import base64
import io
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from bridge.app import create_app
from bridge.config import DEFAULT_MAX_BODY, load_config
from bridge.wire.limits import image_bytes

from .test_bad_input import error_of, raw_request

SMALL = {"max_body": 4096, "max_messages": 3, "max_images": 2, "max_image_bytes": 8}
CHAT = {"model": "tiny", "stream": False, "options": {"num_predict": 1}}


class Untouchable(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0  # the test client rewinds the stream before the request; that is not a read

    def readinto(self, buffer) -> int:
        raise AssertionError("the body was read")


class Counting(io.RawIOBase):
    """An endless chunked body that counts what was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def readinto(self, buffer) -> int:
        buffer[:] = b" " * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


@pytest.fixture(scope="module")
def small(tmp_path_factory, mappings_file):
    """An app (engine running) with tiny limits."""
    config = load_config({}, mappings_path=mappings_file, home=tmp_path_factory.mktemp("limits"),
                         upstream="none", **SMALL)
    app = create_app(config)
    app.extensions["bridge"].start()
    yield app.test_client()
    app.extensions["bridge"].stop()


def openai_error(resp, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.get_data()[:300])
    err = resp.get_json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    return err["message"]


# --- body cap --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/show", "/api/pull",
                                  "/api/llm-backends"])
def test_declared_oversized_body_is_refused_unread(client, path):
    resp = client.post(path, input_stream=Untouchable(), content_type="application/json",
                       environ_overrides={"CONTENT_LENGTH": str(DEFAULT_MAX_BODY + 1)})
    assert "request body too large" in error_of(resp) and resp.status_code == 413


def test_oversized_body_on_v1_has_the_openai_shape(client):
    resp = client.post("/v1/chat/completions", input_stream=Untouchable(),
                       content_type="application/json",
                       environ_overrides={"CONTENT_LENGTH": str(64 << 20)})
    assert "MLX_BRIDGE_MAX_BODY" in openai_error(resp, 413)


def test_chunked_body_is_cut_one_byte_past_the_cap(small):
    body = Counting()
    resp = small.post("/api/chat", input_stream=body, content_type="application/json",
                      headers={"Transfer-Encoding": "chunked"},
                      environ_overrides={"wsgi.input_terminated": True})
    assert "more than 4096 bytes" in error_of(resp) and resp.status_code == 413
    assert body.read_bytes <= 4096 + 1


def test_body_at_the_cap_is_accepted(small):
    prompt = "x" * 100
    raw = f'{{"model":"tiny","prompt":"{prompt}","stream":false,"options":{{"num_predict":1}}}}'
    padded = raw.encode() + b" " * (4096 - len(raw))
    assert len(padded) == 4096
    assert small.post("/api/generate", data=padded,
                      content_type="application/json").status_code == 200
    over = small.post("/api/generate", data=padded + b" ", content_type="application/json")
    assert over.status_code == 413


def test_blob_uploads_are_not_capped(small):
    """Whole model files go to the upstream through /api/blobs: the cap does not apply there."""
    resp = small.post("/api/blobs/sha256:" + "0" * 64, input_stream=io.BytesIO(b"x" * 5000),
                      environ_overrides={"CONTENT_LENGTH": "5000"})
    assert resp.status_code != 413 and "no upstream" in error_of(resp)


def send_headers_only(url: str, length: int) -> tuple[bytes, float]:
    """Announce a huge body, send 10 bytes of it, read the answer: (answer, seconds)."""
    parts = urlsplit(url)
    started = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode() + b'{"model":"')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer, time.perf_counter() - started


def test_real_server_refuses_before_the_body_arrives(server):
    answer, seconds = send_headers_only(server, 1 << 40)  # a terabyte that never comes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"413", answer[:300]
    assert b"request body too large" in body and body.startswith(b'{"error":')
    assert seconds < 10
    assert requests.get(server + "/api/version", timeout=10).status_code == 200


def test_real_server_chunked_oversized_body(server):
    chunk = b"x" * (1 << 20)
    parts = [b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Type: application/json\r\nConnection: close\r\n\r\n"]
    parts += [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 33 + [b"0\r\n\r\n"]
    answer = raw_request(server, b"".join(parts), timeout=60)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"413", answer[:300]
    assert b"more than" in body


# --- messages and images ---------------------------------------------------------------------


def test_messages_cap(small):
    ok = small.post("/api/chat", json={**CHAT, "messages": [{"role": "user", "content": "hi"}] * 3})
    assert ok.status_code == 200
    resp = small.post("/api/chat",
                      json={**CHAT, "messages": [{"role": "user", "content": "hi"}] * 4})
    assert error_of(resp) == "too many messages: 4 (the limit is 3; MLX_BRIDGE_MAX_MESSAGES)"
    resp = small.post("/v1/chat/completions",
                      json={"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 4})
    assert openai_error(resp, 400).startswith("too many messages")


PNG = base64.b64encode(b"\x89PNG").decode()  # 4 bytes: under the 8-byte cap


@pytest.mark.parametrize(("images", "text"), [
    ([PNG] * 3, "too many images: 3"),
    ([base64.b64encode(b"123456789").decode()], "image too large"),
    (["not base64!"], "illegal base64 data at input byte 3"),
    (["QUJD=="], "illegal base64 data at input byte 4"),
    (["QUJ"], "illegal base64 data at input byte 0"),
    (["data:image/png;base64,QUJD"], "illegal base64 data at input byte 4"),
])
def test_image_checks(small, images, text):
    gen = small.post("/api/generate", json={"model": "tiny", "prompt": "x", "images": images})
    assert text in error_of(gen) and gen.status_code == 400
    chat = small.post("/api/chat", json={**CHAT, "messages": [{"role": "user", "content": "x",
                                                                "images": images}]})
    assert text in error_of(chat) and chat.status_code == 400


def test_images_count_across_messages(small):
    msgs = [{"role": "user", "content": "x", "images": [PNG]},
            {"role": "user", "content": "y", "images": [PNG, PNG]}]
    assert error_of(small.post("/api/chat", json={**CHAT, "messages": msgs})).startswith(
        "too many images: 3")


def test_valid_images_pass_validation(small):
    """Within the caps, images reach the model check (the tiny model has no vision)."""
    resp = small.post("/api/chat", json={**CHAT, "messages": [{"role": "user", "content": "x",
                                                                "images": [PNG, "QUJD\r\nREVG"]}]})
    assert error_of(resp) == '"tiny" does not support images'
    v1 = small.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]})
    assert openai_error(v1, 400) == "illegal base64 data at input byte 0"


@pytest.mark.parametrize(("data", "size"), [("", 0), ("QQ==", 1), ("QUI=", 2), ("QUJD", 3),
                                            ("QUJD\nQUJD", 6)])
def test_image_bytes(data, size):
    assert image_bytes(data) == size


# --- the context window ----------------------------------------------------------------------

LONG = "hello world " * 100


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_prompt_longer_than_the_context_is_truncated(client, path):
    body = {"model": "tiny", "stream": False,
            "options": {"num_ctx": 32, "num_predict": 4, "temperature": 0}}
    if path == "/api/generate":
        body["prompt"] = LONG
    else:
        body["messages"] = [{"role": "user", "content": LONG}]
    resp = client.post(path, json=body)
    assert resp.status_code == 200, resp.get_data()[:300]
    out = resp.get_json()
    assert (out["prompt_eval_count"] < 32
            and out["prompt_eval_count"] + out.get("eval_count", 0) <= 32)
    refused = client.post(path, json={**body, "truncate": False})
    assert (refused.status_code, error_of(refused)) == (
        400, "the input length exceeds the context length")


def test_openai_prompt_longer_than_the_context_is_truncated(client):
    resp = client.post("/v1/chat/completions", json={
        "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": LONG * 30}]})
    assert resp.status_code == 200, resp.get_data()[:300]
    assert resp.get_json()["usage"]["prompt_tokens"] < 2048  # the tiny model's context


@pytest.mark.parametrize("num_predict", [1000, -1, -2, 10**30])
def test_num_predict_is_bounded_by_the_context(client, num_predict):
    resp = client.post("/api/generate", json={
        "model": "tiny", "prompt": "count", "stream": False,
        "options": {"num_ctx": 24, "num_predict": num_predict, "temperature": 0}})
    out = resp.get_json()
    assert resp.status_code == 200, out
    assert out["prompt_eval_count"] + out.get("eval_count", 0) <= 24
    if out.get("eval_count", 0) + out["prompt_eval_count"] == 24:
        assert out["done_reason"] == "length"


# --- configuration ---------------------------------------------------------------------------


def test_limits_from_the_environment(tmp_path):
    cfg = load_config({"MLX_BRIDGE_MAX_BODY": "1048576", "MLX_BRIDGE_MAX_MESSAGES": "50",
                       "MLX_BRIDGE_MAX_IMAGES": "0", "MLX_BRIDGE_MAX_IMAGE_BYTES": "1000"},
                      home=tmp_path)
    assert (cfg.max_body, cfg.max_messages, cfg.max_images, cfg.max_image_bytes) == (
        1 << 20, 50, 0, 1000)
    default = load_config({"MLX_BRIDGE_MAX_BODY": "lots", "MLX_BRIDGE_MAX_MESSAGES": "0"},
                          home=tmp_path)
    assert default.max_body == DEFAULT_MAX_BODY == 32 << 20 and default.max_messages == 10_000


def test_max_body_reaches_the_server_process(tmp_path, mappings_file):
    from .conftest import start_server, stop_server

    proc, url = start_server(["--mappings", str(mappings_file), "--home", str(tmp_path),
                              "--upstream", "none"],
                             env={"MLX_BRIDGE_MAX_BODY": "2048"})
    try:
        big = requests.post(url + "/api/show", data=b" " * 2049 + b"{}", timeout=10)
        assert big.status_code == 413 and "the limit is 2048" in big.json()["error"]
        ok = requests.post(url + "/api/show", json={"model": "tiny"}, timeout=10)
        assert ok.status_code == 200
    finally:
        stop_server(proc)
