#!/usr/bin/env python3
"""Image-request latency: the bridge's /api/chat against raw mlx-vlm on the same model and image.

  raw     mlx_vlm.stream_generate in-process (after bridge.engine.blas.enable(), as the engine)
  bridge  `mlx-bridge serve` /api/chat, streamed, one image (a real server process)

Both greedy, the same prompt (mlx-vlm's chat template, one user turn with the image) and the same
token budget. TTFT is measured by the caller (request sent -> first token); decode is tokens per
second after the first token. Prints a table with the overhead ratios, writes JSON.

    python scripts/bench_vision.py                  # a tiny random Qwen2-VL, well under a minute
    python scripts/bench_vision.py --model DIR      # a real mlx-vlm model directory
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_common import free_port, start_server  # noqa: E402

QUESTION = "What is in the image?"


def image_png(size: int) -> bytes:
    from PIL import Image

    pixels = (np.random.RandomState(7).rand(size, size, 3) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def run_raw(model_dir: str, png: bytes, tokens: int, runs: int) -> dict:
    """mlx-vlm alone: load once, then `runs` generations (the first one warms up, not counted)."""
    from bridge.engine.blas import enable

    blas = enable().name
    from mlx_vlm import load, stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from PIL import Image

    model, processor = load(model_dir)
    prompt = apply_chat_template(processor, model.config, QUESTION, num_images=1)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    ttfts, rates, counts = [], [], []
    for i in range(runs + 1):
        began = time.perf_counter()
        first = last = 0.0
        n = 0
        for result in stream_generate(model, processor, prompt, image=[image],
                                      max_tokens=tokens, temperature=0.0):
            last = time.perf_counter()
            first = first or last
            n = result.generation_tokens  # the final result repeats the count: not a token
        if i:
            ttfts.append(first - began)
            rates.append((n - 1) / (last - first) if n > 1 and last > first else 0.0)
            counts.append(n)
    return {"blas": blas, "ttft_s": statistics.median(ttfts),
            "decode_tps": statistics.median(rates), "tokens": counts}


def _ready(url: str) -> bool:
    return requests.get(url + "/api/version", timeout=2).ok


def run_bridge(model_dir: str, png: bytes, tokens: int, runs: int, tmp: Path) -> dict:
    import base64

    import yaml

    mappings = tmp / "model_mappings.yaml"
    mappings.write_text(yaml.safe_dump({"models": {"vlm": {"mlx": model_dir, "backend": "mlx"}}}))
    port = free_port()
    cmd = [sys.executable, "-m", "bridge", "serve", "--port", str(port), "--mappings",
           str(mappings), "--home", str(tmp / "home"), "--upstream", "none"]
    server = start_server("bridge", cmd, {"HF_HUB_OFFLINE": "1"}, port, _ready, tmp)
    url = f"http://127.0.0.1:{port}/api/chat"
    body = {"model": "vlm", "stream": True,
            "options": {"temperature": 0, "num_predict": tokens},
            "messages": [{"role": "user", "content": QUESTION,
                          "images": [base64.b64encode(png).decode()]}]}
    ttfts, rates, server_rates, counts = [], [], [], []
    try:
        for i in range(runs + 1):
            began = time.perf_counter()
            first = last = 0.0
            final: dict = {}
            with requests.post(url, json=body, stream=True, timeout=600) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if not line:
                        continue
                    obj = json.loads(line)
                    last = time.perf_counter()
                    if obj.get("done"):
                        final = obj
                    else:
                        first = first or last
            # Chunks are not tokens (a token that ends mid-character is sent with the next
            # one): the count is the server's eval_count, the time the client's.
            n = final["eval_count"]
            if i:
                ttfts.append(first - began)
                rates.append((n - 1) / (last - first) if n > 1 and last > first else 0.0)
                server_rates.append(final["eval_count"] / (final["eval_duration"] / 1e9))
                counts.append(final["eval_count"])
    finally:
        server.stop()
    return {"ttft_s": statistics.median(ttfts), "decode_tps": statistics.median(rates),
            "server_decode_tps": statistics.median(server_rates), "tokens": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an mlx-vlm model directory (default: a tiny Qwen2-VL)")
    parser.add_argument("--image", type=int, default=112, help="image side in pixels")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default="bench_vision.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model_dir = args.model
        if model_dir is None:
            from bridge.testing_vision import build_tiny_vlm

            model_dir = str(build_tiny_vlm(tmp / "tiny-vlm", max_pixels=args.image ** 2))
        png = image_png(args.image)
        bridge = run_bridge(model_dir, png, args.tokens, args.runs, tmp)
        raw = run_raw(model_dir, png, args.tokens, args.runs)
    result = {"model": args.model or "tiny qwen2_vl (random)", "image_px": args.image,
              "tokens": args.tokens, "runs": args.runs, "raw": raw, "bridge": bridge,
              "ttft_ratio": bridge["ttft_s"] / raw["ttft_s"],
              "decode_ratio": bridge["decode_tps"] / raw["decode_tps"],
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "cpus": os.cpu_count()}
    print(f"{'':10}{'TTFT ms':>10}{'decode tok/s':>14}{'tokens':>8}")
    for name in ("raw", "bridge"):
        r = result[name]
        print(f"{name:10}{r['ttft_s'] * 1000:>10.1f}{r['decode_tps']:>14.1f}"
              f"{statistics.median(r['tokens']):>8.0f}")
    print(f"bridge/raw: TTFT x{result['ttft_ratio']:.2f}, decode x{result['decode_ratio']:.2f}"
          f"  (load {load_before[0]:.1f} -> {result['loadavg_after'][0]:.1f} on {os.cpu_count()}"
          " CPUs)")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
