#!/usr/bin/env python3
"""Benchmark the bridge against raw mlx-lm, mlx_lm.server and (optionally) llama.cpp.

Same model, same prompts, one run:
  raw          mlx-lm stream_generate in-process (fast BLAS), and again on the wheel's bundled BLAS
  bridge       `mlx-bridge serve` /api/chat (a real server process)
  mlx_lm.server /v1/chat/completions (the peer, on the same fast BLAS through LD_PRELOAD)
  llama.cpp    llama-cpp-python on --gguf, when it is installed
  KV cache     the bridge's engine per OLLAMA_KV_CACHE_TYPE: memory per 1k tokens, greedy
               agreement with f16, batched (scripts/bench_kv.py)
  speculative  a lone greedy stream with a layer-cut draft (--draft-layers) and with
               prompt-lookup drafting on repeating and free-text prompts (scripts/bench_spec.py)
The bridge runs at its defaults (BLAS threads, OLLAMA_NUM_PARALLEL): what users get.
Prints a table of values and ratios against the targets, writes bench.json and bench.png.
Each run records the load average: on a busy machine the wall-clock numbers move 2-4x; the
CPU microseconds per token move far less.

    python scripts/bench.py --quick                     # tiny random model, about 2 minutes
    python scripts/bench.py --model DIR [--gguf FILE]   # a real MLX model (+ its GGUF)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_ab import run_ab, run_ab_aggregate  # noqa: E402
from bench_common import (  # noqa: E402
    PeakRss,
    Server,
    Workload,
    cpu_seconds,
    free_port,
    load_average,
    rss_bytes,
    start_server,
    tree_pids,
)
from bench_measure import measure, ollama_client, openai_client  # noqa: E402
from bench_report import report  # noqa: E402


def run_raw(engine: str, model: str, work: Workload, env: dict[str, str] | None = None) -> dict:
    """One in-process column, in a fresh interpreter."""
    cmd = [sys.executable, str(HERE / "bench_raw.py"), "--engine", engine, "--model", model,
           "--workload", json.dumps(work.to_dict())]
    out = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                         timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{engine} worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("BENCH_JSON "):])


@contextlib.contextmanager
def bridge_server(model: str, tmp: Path, env: dict[str, str] | None = None,
                  name: str = "bridge") -> Iterator[Server]:
    """The bridge as users run it (`mlx-bridge serve`, defaults), serving `model` as "bench"."""
    import yaml

    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    mappings = home / "model_mappings.yaml"
    mappings.write_text(yaml.safe_dump({"models": {"bench": {"mlx": model, "backend": "mlx"}}}))
    port = free_port()
    cmd = [sys.executable, "-m", "bridge", "serve", "--port", str(port),
           "--mappings", str(mappings), "--home", str(home / "home")]
    server = start_server(name, cmd, {"HF_HUB_OFFLINE": "1", **(env or {})}, port,
                          lambda url: requests.get(url + "/health", timeout=2)
                          .json()["engine"]["state"] == "running",
                          tmp)
    try:
        yield server
    finally:
        server.stop()


def run_bridge(model: str, work: Workload, tmp: Path, env: dict[str, str] | None = None,
               ab_rounds: int = 0) -> dict:
    """The bridge as users run it, plus RSS before load and after a keep_alive unload; with
    `ab_rounds`, single-stream decode rounds alternated with raw mlx-lm's (scripts/bench_ab.py)."""
    with bridge_server(model, tmp, env) as server:
        rss_before = _settled_rss(server.proc.pid)
        health = requests.get(server.url + "/health", timeout=5).json()["engine"]
        peak = PeakRss(server.proc.pid)
        client = ollama_client(server.url, "bench")
        out = measure(*client, work, cpu=lambda: cpu_seconds(tree_pids(server.proc.pid)))
        out["peak_rss"] = peak.stop()
        if ab_rounds:
            print("... decode rounds alternated with raw mlx-lm", flush=True)
            out["decode_ab"] = run_ab(model, client[0], ab_rounds,
                                      work.overhead_tokens or work.ab_tokens)
        out["blas"] = health.get("blas")
        out["num_parallel"] = health.get("num_parallel")
        out["blas_threads"] = health.get("blas_threads")
        out["row_block"] = health.get("row_block")  # matmul rows padded to multiples of this
        out["rss_before_load"] = rss_before
        out["rss_after_unload"] = _rss_after_expiry(server.url, server.proc.pid)
        return out


def _settled_rss(pid: int, timeout: float = 30.0) -> int:
    """The idle server's RSS once the engine's start-up is over: /health says "running" as soon
    as the engine thread starts, while it still imports MLX and runs its first matmul (~10 MB
    more; a reading taken 1 s after start came too early on a busy machine)."""
    readings = [rss_bytes(tree_pids(pid))]
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        readings.append(rss_bytes(tree_pids(pid)))
        if len(readings) >= 4 and max(readings[-3:]) - min(readings[-3:]) < (1 << 19):
            break  # flat (within 0.5 MB) for a second
    return readings[-1]


def _rss_after_expiry(url: str, pid: int) -> int:
    """Let the model expire (keep_alive 1s) and read the RSS once /api/ps is empty."""
    requests.post(url + "/api/chat", json={"model": "bench", "keep_alive": "1s", "stream": False,
                                           "messages": [{"role": "user", "content": "bye"}],
                                           "options": {"num_predict": 1}}, timeout=120)
    deadline = time.time() + 30
    while time.time() < deadline and requests.get(url + "/api/ps", timeout=5).json()["models"]:
        time.sleep(0.2)
    time.sleep(0.5)
    return rss_bytes(tree_pids(pid))


def run_peer(model: str, work: Workload, tmp: Path, ab_rounds: int = 0) -> dict:
    """mlx_lm.server with its defaults (continuous batching, prompt cache), on the same BLAS;
    with `ab_rounds`, its rounds of the widest client count alternated with a fresh bridge's."""
    from bridge.engine import blas
    from bridge.engine.blas_build import patched_openblas

    env = {"HF_HUB_OFFLINE": "1"}
    if sys.platform.startswith("linux"):
        env["LD_PRELOAD"] = str(patched_openblas())  # the same fast path as the bridge
        env["OPENBLAS_NUM_THREADS"] = str(blas.threads())  # and the same thread rule
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm.server", "--model", model, "--port", str(port)]
    server = start_server("mlx_lm.server", cmd, env, port,
                          lambda url: requests.get(url + "/v1/models", timeout=2).ok, tmp)
    try:
        peak = PeakRss(server.proc.pid)
        client = openai_client(server.url)
        out = measure(*client, work, cpu=lambda: cpu_seconds(tree_pids(server.proc.pid)))
        out["peak_rss"] = peak.stop()
        out["blas_threads"] = int(env["OPENBLAS_NUM_THREADS"]) if "OPENBLAS_NUM_THREADS" in env \
            else None
        clients = max(work.clients)
        if ab_rounds and clients > 1:
            print(f"... {clients} clients alternated with the bridge", flush=True)
            with bridge_server(model, tmp, name="bridge-ab") as bridge:
                out["aggregate_ab"] = run_ab_aggregate(
                    client[1], ollama_client(bridge.url, "bench")[1], clients, work.agg_tokens,
                    ab_rounds)
        return out
    finally:
        server.stop()


def run_kv(model: str, types: list[str], tokens: int) -> dict:
    """The KV-cache types side by side, in a fresh process (scripts/bench_kv.py)."""
    cmd = [sys.executable, str(HERE / "bench_kv.py"), "--model", model, "--types", ",".join(types),
           "--tokens", str(tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if out.returncode or not lines:
        raise RuntimeError(f"kv worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("BENCH_JSON "):])


def run_spec(model: str, draft: str, tokens: int, prompts: str = "story") -> dict:
    """Speculative decoding against plain, in a fresh process (scripts/bench_spec.py); `draft`
    is a model directory or `prompt-lookup`, one run per prompt name (bench_common)."""
    cmd = [sys.executable, str(HERE / "bench_spec.py"), "--model", model, "--draft", draft,
           "--tokens", str(tokens), "--prompts", prompts]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if out.returncode or not lines:
        raise RuntimeError(f"spec worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("BENCH_JSON "):])


def tiny_model(tmp: Path, wide: bool = False) -> str:
    from bridge.testing import build_tiny_model

    if wide:
        return str(build_tiny_model(tmp / "tiny-wide", hidden_size=128, num_heads=2,
                                    num_kv_heads=1, intermediate_size=256))
    return str(build_tiny_model(tmp / "tiny"))


def _run_steps(steps: list, columns: dict[str, dict]) -> None:
    for name, step in steps:
        print(f"... {name}", flush=True)
        started = time.perf_counter()
        columns[name] = step()
        columns[name]["wall_s"] = time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="MLX model directory (default: a tiny random model)")
    p.add_argument("--gguf", help="GGUF of the same model, for the llama.cpp column")
    p.add_argument("--quick", action="store_true",
                   help="short runs (the default on the tiny model)")
    p.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    p.add_argument("--skip", default="",
                   help="comma list of columns to leave out: raw-bundled,peer,llamacpp,"
                        "lookup (the prompt-lookup drafting run)")
    p.add_argument("--bridge-bundled", action="store_true",
                   help="also run the bridge on the bundled BLAS")
    p.add_argument("--bridge-threads", type=int, default=0,
                   help="also run the bridge with this many BLAS threads (the default's rival)")
    p.add_argument("--load", type=int, default=0,
                   help="run N busy-looping processes throughout, started before the servers "
                        "(a bridge started on a busy machine; compare with a run without)")
    p.add_argument("--follow", type=int, default=0,
                   help="then N busy loops started AFTER each bridge is up: the bridge at its "
                        "defaults against 1 and 2 fixed BLAS threads, idle and under that "
                        "load (scripts/bench_follow.py)")
    p.add_argument("--draft", help="a draft model directory for the speculative run")
    p.add_argument("--draft-layers", type=int, default=-1,
                   help="cut a draft from the model's first N layers (default: 1 on the tiny "
                        "model, none otherwise); 0 skips the speculative run")
    p.add_argument("--ab-rounds", type=int, default=6,
                   help="single-stream decode rounds alternated between raw mlx-lm and the "
                        "bridge, both up at once (drift between the columns cancels); 0 skips")
    p.add_argument("--kv-types", default="f16,q8_0,q4_0",
                   help="KV cache types to compare ('' to skip)")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = Workload.quick() if args.quick or not args.model else Workload.full()
    if not args.model:  # the tiny model: the per-token overhead run (5 rounds, ~8 s a column)
        work = replace(work, overhead_tokens=2000)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlx-bridge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or tiny_model(tmp)
        columns: dict[str, dict] = {}
        steps = [("raw", lambda: run_raw("mlx", model, work))]
        if "raw-bundled" not in skip:
            # The reference BLAS is slow: fewer TTFT samples and chat turns keep the run short.
            slow = replace(work, ttft_requests=min(work.ttft_requests, 4), turns=min(work.turns, 3),
                           chats=1)
            steps.append(("raw (bundled BLAS)",
                          lambda: run_raw("mlx", model, slow, {"MLX_BRIDGE_BLAS": "off"})))
        steps.append(("bridge", lambda: run_bridge(model, work, tmp, ab_rounds=args.ab_rounds)))
        if args.bridge_threads:
            steps.append((f"bridge ({args.bridge_threads} BLAS threads)",
                          lambda: run_bridge(model, work, tmp, {
                              "MLX_BRIDGE_BLAS_THREADS": str(args.bridge_threads)})))
        if args.bridge_bundled:
            steps.append(("bridge (bundled BLAS)",
                          lambda: run_bridge(model, work, tmp, {"MLX_BRIDGE_BLAS": "off"})))
        if "peer" not in skip:
            steps.append(("mlx_lm.server",
                          lambda: run_peer(model, work, tmp, ab_rounds=args.ab_rounds)))
        if args.gguf and "llamacpp" not in skip and importlib.util.find_spec("llama_cpp"):
            steps.append(("llama.cpp", lambda: run_raw("llamacpp", args.gguf, work)))
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.load)]
        time.sleep(1.0 if hogs else 0)  # the engine reads the CPU use when it starts
        load_before = load_average()
        try:
            _run_steps(steps, columns)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        follow = None
        if args.follow:
            from bench_follow import run_follow, table

            follow = run_follow(model, tmp, args.follow, work.decode_tokens)
            print(table(follow), flush=True)
        kv = None
        kv_types = [t for t in args.kv_types.split(",") if t]
        if kv_types:
            print("... KV cache types", flush=True)
            # The tiny model's 16-wide heads cannot be quantized (MLX groups of 64): a wider one.
            kv_model = args.model or tiny_model(tmp, wide=True)
            kv = run_kv(kv_model, kv_types, min(work.decode_tokens, 48))
        spec = None
        layers = args.draft_layers if args.draft_layers >= 0 else (0 if args.model else 1)
        if args.draft or layers:
            from bridge.testing import build_self_draft

            print("... speculative decoding", flush=True)
            draft = args.draft or str(build_self_draft(model, tmp / "draft", layers))
            spec = run_spec(model, draft, work.decode_tokens)
            spec["draft_layers"] = None if args.draft else layers
        lookup = None
        if "lookup" not in skip:  # prompt-lookup drafting: a repeating task and free text
            print("... prompt-lookup drafting", flush=True)
            lookup = run_spec(model, "prompt-lookup", work.decode_tokens, "repeat,code,story,facts")
    meta = {"model": args.model or "tiny (random weights)", "gguf": args.gguf,
            "workload": work.to_dict(), "cpus": os.cpu_count(), "platform": sys.platform,
            "time": time.strftime("%Y-%m-%d %H:%M"),
            "load_average": [load_before, load_average()], "busy_loops": args.load,
            "follow": follow}
    report(columns, meta, out_dir, kv, spec, lookup)


if __name__ == "__main__":
    main()
