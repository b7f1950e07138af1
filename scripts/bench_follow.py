#!/usr/bin/env python3
"""Do the bridge's BLAS threads follow load that starts after it is up? (issue 17)

For each bridge (defaults: the thread count follows other work; fixed at 1; fixed at 2): start
`mlx-bridge serve`, decode on an idle machine, then start N busy-loop processes, give the
bridge `--settle` seconds, decode again, stop them, wait again. Reports the decode rate the
server measured (eval_count / eval_duration) and the BLAS thread count /health showed at each
point. The start-up rule alone kept the idle count under load started later; a fixed count is
right for one half only.

    python scripts/bench_follow.py --model DIR [--load 2] [--tokens 32]
    python scripts/bench.py ... --follow 2        # the same, as part of the full benchmark
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_common import free_port, load_average, start_server  # noqa: E402

BRIDGES = {"defaults (follows)": {}, "1 thread (fixed)": {"MLX_BRIDGE_BLAS_THREADS": "1"},
           "2 threads (fixed)": {"MLX_BRIDGE_BLAS_THREADS": "2"}}


def decode(url: str, tokens: int) -> float:
    """One greedy generation: the server's own decode rate, tokens per second."""
    body = {"model": "bench", "prompt": "Tell me a long story about a lighthouse keeper.",
            "stream": False, "options": {"temperature": 0, "num_predict": tokens}}
    out = requests.post(url + "/api/generate", json=body, timeout=600).json()
    return out["eval_count"] / max(out["eval_duration"], 1) * 1e9


def threads(url: str) -> int | None:
    return requests.get(url + "/health", timeout=10).json()["engine"]["blas_threads"]


def one_bridge(model: str, env: dict[str, str], tmp: Path, load: int, tokens: int,
               settle: float) -> dict:
    import yaml

    mappings = tmp / "model_mappings.yaml"
    mappings.write_text(yaml.safe_dump({"models": {"bench": {"mlx": model, "backend": "mlx"}}}))
    port = free_port()
    cmd = [sys.executable, "-m", "bridge", "serve", "--port", str(port), "--mappings",
           str(mappings), "--home", str(tmp / "home"), "--upstream", "none"]
    server = start_server("bridge-follow", cmd, {"HF_HUB_OFFLINE": "1", **env}, port,
                          lambda url: requests.get(url + "/health", timeout=2)
                          .json()["engine"]["state"] == "running", tmp)
    out: dict = {}
    try:
        decode(server.url, 2)  # load the model (and its warm-up) before anything is timed
        out["idle_threads"] = threads(server.url)
        out["idle_tok_s"] = decode(server.url, tokens)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(load)]
        try:
            time.sleep(settle)  # the follower smooths over a few seconds (blas.ThreadFollower)
            out["load_threads"] = threads(server.url)
            out["load_tok_s"] = decode(server.url, tokens)
            out["load_threads_after"] = threads(server.url)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        time.sleep(settle)
        out["after_threads"] = threads(server.url)
        return out
    finally:
        server.stop()


def run_follow(model: str, tmp: Path, load: int = 2, tokens: int = 32, settle: float = 5.0,
               only: list[str] | None = None) -> dict:
    """The bridges of BRIDGES (`only` those whose names start with one of `only`), idle then
    under `load` busy loops started after it was up."""
    out = {"load": load, "tokens": tokens, "settle_s": settle,
           "load_average_before": load_average(), "bridges": {}}
    for name, env in BRIDGES.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        print(f"... follow: bridge {name}", flush=True)
        out["bridges"][name] = one_bridge(model, env, tmp, load, tokens, settle)
    out["load_average_after"] = load_average()
    return out


def table(result: dict) -> str:
    names = list(result["bridges"])
    rows = [("decode tok/s, before the load (idle?)", "idle_tok_s"),
            ("BLAS threads then", "idle_threads"),
            (f"decode tok/s, {result['load']} busy loops started later", "load_tok_s"),
            ("BLAS threads under that load", "load_threads"),
            ("BLAS threads after the load ended", "after_threads")]
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key in rows:
        cells = []
        for n in names:
            v = result["bridges"][n].get(key)
            cells.append("–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="MLX model directory (default: the tiny random model)")
    p.add_argument("--load", type=int, default=2, help="busy-loop processes started later")
    p.add_argument("--tokens", type=int, default=32, help="tokens per timed generation")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds between starting (or stopping) the load and reading the count")
    p.add_argument("--only", default="",
                   help="comma list of bridges to run: defaults,1,2 (default: all three)")
    p.add_argument("--out", help="write the JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlx-bridge-follow-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if not model:
            from bridge.testing import build_tiny_model

            model = str(build_tiny_model(tmp / "tiny"))
        result = run_follow(model, tmp, args.load, args.tokens, args.settle,
                            [o for o in args.only.split(",") if o])
    result["model"] = args.model or "tiny (random weights)"
    print(table(result))
    print(f"load average {result['load_average_before']} -> {result['load_average_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
