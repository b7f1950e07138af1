"""Request images for a vision model: base64 decoded and checked here, on the request thread.

The wire layer has already checked each image is base64 and within MLX_BRIDGE_MAX_IMAGE_BYTES
and that the request carries at most MLX_BRIDGE_MAX_IMAGES (bridge/wire/limits.py). Here each
one is decoded with Pillow (not MLX), so a file that is not an image, or an image whose pixel
count would blow up memory once decoded, is a 400 before the engine sees the job, and the
engine thread never spends time decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from bridge.errors import BadRequest, Unsupported

# Decoded pixels per image: a small PNG can claim 50000x50000 (a "decompression bomb").
MAX_PIXELS = 40_000_000
# Longest side kept after decoding. VLM processors shrink images far below this anyway (Qwen2.5-VL
# to ~1M pixels by default, Gemma 3 to 896x896, SmolVLM to 1536 on the long side); shrinking here
# bounds what a request holds in memory until the engine takes it: at most 2048x2048 RGB (12 MB)
# per image, whatever the compressed file claimed.
MAX_SIDE = 2048
# Decoded pixels per request, all images together: 32 images each just under MAX_PIXELS (a few KB
# each as flat PNGs) took one request thread 36 s of CPU and 700 MB. Two images at the per-image
# cap, or 32 at 1580x1580, fit.
MAX_REQUEST_PIXELS = 2 * MAX_PIXELS


def decode_images(images: list[str], where: str) -> list[Any]:
    """The images as RGB Pillow images; BadRequest naming the first bad one, or the request's
    pixel total when it is over MAX_REQUEST_PIXELS (checked from the headers, before decoding)."""
    total = sum(_pixels(data, f"{where}[{i}]") for i, data in enumerate(images))
    if total > MAX_REQUEST_PIXELS:
        raise BadRequest(f"images too large: {where} are {total} pixels in all (the limit is "
                         f"{MAX_REQUEST_PIXELS} pixels per request)")
    return [decode_image(data, f"{where}[{i}]") for i, data in enumerate(images)]


def _pixels(data: str, where: str) -> int:
    """The pixel count an image's header claims (cheap: nothing is decoded); 0 when unreadable,
    which decode_image then reports."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(data, validate=False))) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - any unreadable image is reported by decode_image
        return 0
    _check_pixels(width, height, where)
    return width * height


def _check_pixels(width: int, height: int, where: str) -> None:
    if width * height > MAX_PIXELS:
        raise BadRequest(f"image too large: {where} is {width}x{height} pixels (the "
                         f"limit is {MAX_PIXELS} pixels)")


def decode_image(data: str, where: str) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # the `vision` extra is not installed: another backend may serve it
        raise Unsupported("vision models need Pillow and mlx-vlm: "
                          "pip install 'mlx-bridge[vision]'") from None

    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            _check_pixels(width, height, where)
            if max(width, height) > MAX_SIDE:
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale
            rgb = img.convert("RGB")  # decodes the whole image: a truncated file fails here
    except BadRequest:
        raise
    except Image.DecompressionBombError:  # over Pillow's own cap (~179M pixels), at open
        raise BadRequest(f"image too large: {where} claims more than {MAX_PIXELS} pixels (the "
                         "limit)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRequest(f"{where} is not a valid image ({_reason(exc)})") from None
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)  # keeps the aspect ratio
    return rgb


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(" <_io.")[0] if text else type(exc).__name__
