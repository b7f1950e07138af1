"""Attacks with images: bombs, odd and broken formats, many and huge images, on every protocol.

One real server process with the tiny VLM (bridge.testing_vision) and the tiny text model. Each
bad image must be a clear 4xx in its protocol's shape, and heavy valid ones must not hold the
others: `/api/version` and a short chat on the text model are timed beside every attack.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from PIL import Image

from bridge.testing import build_tiny_model
from bridge.testing_vision import build_tiny_vlm

from .helpers import start_server, stop_server, write_mappings
from .hostile_util import beside, keep_reading, tree_rss

VLM, TEXT = "tiny-vlm", "tiny-text"


@dataclass
class Srv:
    url: str
    pid: int


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Srv]:
    root = tmp_path_factory.mktemp("hostile-vision")
    mappings = write_mappings(root / "map.yaml", {
        VLM: {"mlx": str(build_tiny_vlm(root / "vlm", max_position_embeddings=8192)),
              "backend": "mlx"},
        TEXT: {"mlx": str(build_tiny_model(root / "text")), "backend": "mlx"}})
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"])
    keep_reading(proc, root / "server.log")
    try:
        for model in (VLM, TEXT):  # loaded before anything is timed
            requests.post(url + "/api/chat", timeout=60, json={"model": model, "messages": []})
        yield Srv(url, proc.pid)
    finally:
        stop_server(proc)


def encode(img: Image.Image, fmt: str, **save) -> str:
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return base64.b64encode(out.getvalue()).decode()


def noise(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255)
                           .astype("uint8"))


def png_claiming(width: int, height: int) -> str:
    """A PNG header claiming width x height with one tiny IDAT: the classic pixel bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return base64.b64encode(raw + chunk(b"IEND", b"")).decode()


def gif_frames(frames: int) -> str:
    imgs = [Image.new("P", (64, 64), i % 256) for i in range(frames)]
    out = io.BytesIO()
    imgs[0].save(out, format="GIF", save_all=True, append_images=imgs[1:], duration=10)
    return base64.b64encode(out.getvalue()).decode()


def png16() -> str:
    return encode(Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)),
                  "PNG")


def cmyk_jpeg() -> str:
    return encode(noise(64).convert("CMYK"), "JPEG")


def truncated_png() -> str:
    raw = base64.b64decode(encode(noise(256), "PNG"))
    return base64.b64encode(raw[: len(raw) // 2]).decode()


SVG = base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                       b'<rect width="10" height="10"/></svg>').decode()
SMALL = encode(noise(32), "PNG")


def native(url: str, images: list[str], path: str = "/api/chat") -> requests.Response:
    if path == "/api/generate":
        body = {"model": VLM, "prompt": "what is it?", "images": images}
    else:
        body = {"model": VLM, "messages": [{"role": "user", "content": "what is it?",
                                            "images": images}]}
    return requests.post(url + path, timeout=120, json={
        **body, "stream": False, "options": {"num_predict": 2, "temperature": 0}})


def openai_chat(url: str, image_url: str) -> requests.Response:
    return requests.post(url + "/v1/chat/completions", timeout=60, json={
        "model": VLM, "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image_url", "image_url": {"url": image_url}}]}]})


def anthropic(url: str, source: dict) -> requests.Response:
    return requests.post(url + "/v1/messages", timeout=60, json={
        "model": VLM, "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "image", "source": source}, {"type": "text", "text": "what is it?"}]}]})


def responses(url: str, image_url: str) -> requests.Response:
    return requests.post(url + "/v1/responses", timeout=60, json={
        "model": VLM, "max_output_tokens": 16, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "what is it?"},
            {"type": "input_image", "image_url": image_url}]}]})


def error_text(resp: requests.Response) -> str:
    body = resp.json()
    error = body.get("error")
    return error if isinstance(error, str) else json.dumps(error)


def attack(srv: Srv, send, status: int | tuple[int, ...], words: str = "") -> requests.Response:
    before = tree_rss(srv.pid)
    run = beside(srv.url, TEXT, send, pid=srv.pid)
    print(f"{run.row()}; rss before {before >> 20} MiB")
    assert not isinstance(run.result, Exception), run.result
    resp = run.result
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        assert words.lower() in error_text(resp).lower(), resp.text[:500]
    run.assert_unhurt()
    return resp


BOMB = png_claiming(50_000, 50_000)

BAD = {  # id: (request, status, words in the error)
    "pixel-bomb-native": (lambda u: native(u, [BOMB]), 400, "image too large"),
    "pixel-bomb-generate": (lambda u: native(u, [BOMB], "/api/generate"), 400, "too large"),
    "svg": (lambda u: native(u, [SVG]), 400, "not a valid image"),
    "truncated-png": (lambda u: native(u, [truncated_png()]), 400, "not a valid image"),
    "not-base64": (lambda u: native(u, ["%%%not base64%%%"]), 400, "illegal base64"),
    "33-images": (lambda u: native(u, [SMALL] * 33), 400, "too many images"),
    "21MB-image": (lambda u: native(u, ["A" * (28 << 20)]), 400, "image too large"),
    "openai-http-url": (lambda u: openai_chat(u, "http://127.0.0.1:9/x.png"), 400, "image"),
    "openai-bad-data-url": (lambda u: openai_chat(u, "data:image/png;base64"), 400, "image"),
    "openai-bomb": (lambda u: openai_chat(u, "data:image/png;base64," + BOMB), 400, "too large"),
    "openai-data-url-garbage": (lambda u: openai_chat(u, "data:image/png;base64,@@@@"), 400,
                                "base64"),
    "anthropic-url-source": (lambda u: anthropic(u, {"type": "url", "url": "http://x/y.png"}),
                             400, "base64"),
    "anthropic-bomb": (lambda u: anthropic(u, {"type": "base64", "media_type": "image/png",
                                                 "data": BOMB}), 400, "too large"),
    "responses-http-url": (lambda u: responses(u, "http://127.0.0.1:9/x.png"), 400, "image"),
    "responses-bomb": (lambda u: responses(u, "data:image/png;base64," + BOMB), 400,
                       "too large"),
    "image-on-text-model": (lambda u: requests.post(u + "/api/chat", timeout=60, json={
        "model": TEXT, "stream": False, "messages": [
            {"role": "user", "content": "x", "images": [SMALL]}]}), 400,
        "does not support images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_image_is_a_clear_400_and_hurts_nobody(srv, case):
    send, status, words = BAD[case]
    attack(srv, lambda: send(srv.url), status, words)


ODD = {  # formats that are images: answered (or refused clearly), never a 5xx
    "gif-2000-frames": lambda: gif_frames(2000),
    "png-16-bit": png16,
    "cmyk-jpeg": cmyk_jpeg,
    "4000x4000-jpeg": lambda: encode(noise(4000), "JPEG", quality=30),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_formats_are_answered(srv, case):
    image = ODD[case]()
    attack(srv, lambda: native(srv.url, [image]), 200)


def test_many_big_images_are_refused_before_decoding(srv):
    """32 images of 6000x5000 pixels (each under the 40M pixel cap, 90 KB as PNG): before, the
    request thread decoded them all (36 s, +700 MB); now the pixel total is a 400 at once."""
    flat = encode(Image.new("RGB", (6000, 5000), (200, 10, 10)), "PNG")
    resp = attack(srv, lambda: native(srv.url, [flat] * 32), 400, "pixels per request")
    assert "960000000 pixels in all" in resp.text


def test_images_up_to_the_request_total_are_answered(srv):
    """Two images at 4000x4000 (32M pixels in all): decoded, shrunk and answered."""
    big = encode(noise(4000, seed=1), "JPEG", quality=30)
    attack(srv, lambda: native(srv.url, [big, big]), 200)
