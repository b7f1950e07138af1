"""Benchmark worker: an engine driven in-process (raw mlx-lm, or llama-cpp-python); prints JSON.

Run by scripts/bench.py in a fresh process, so each column gets its own BLAS and its own RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import LONG_ASK, Workload, decode_rate, user  # noqa: E402
from bench_measure import Result, measure  # noqa: E402


def matmul_gflops(n: int = 1024, reps: int = 5) -> float:
    """float32 n x n matmul throughput on MLX's CPU path."""
    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    start = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def mlx_stream(model_dir: str):
    """mlx-lm's own stream_generate: the reference the bridge must match."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(model_dir)
    greedy = make_sampler(temp=0.0)

    def stream(messages: list[dict], n: int) -> Result:
        sent = time.perf_counter()
        if tokenizer.has_chat_template:
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:  # what the bridge does without a template
            prompt = tokenizer.encode("\n\n".join(m["content"] for m in messages))
        first = last = 0.0
        tokens, parts = 0, []
        for r in stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=greedy):
            last = time.perf_counter()
            if r.text:  # like the HTTP clients: the first token that shows text
                first = first or last
            tokens = r.generation_tokens
            parts.append(r.text)
        first = first or time.perf_counter()  # no text at all: the end is the first
        return Result(first - sent, tokens, first, last, "".join(parts))

    return stream


def llamacpp_stream(gguf: str, threads: int):
    """llama-cpp-python on a GGUF (the engine inside Ollama); optional."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=4096, n_threads=threads, verbose=False)

    def stream(messages: list[dict], n: int) -> Result:
        sent = time.perf_counter()
        first = last = 0.0
        tokens, parts = 0, []
        for chunk in llm.create_chat_completion(messages, max_tokens=n, temperature=0, stream=True):
            text = chunk["choices"][0]["delta"].get("content") or ""
            if text:
                last = time.perf_counter()
                first = first or last
                tokens += 1  # one chunk per token
                parts.append(text)
        first = first or time.perf_counter()  # no text at all: the end is the first
        return Result(first - sent, tokens, first, last, "".join(parts))

    return stream


def serve(stream) -> None:
    """Decode rounds on request, so that another engine's rounds can alternate with these."""
    print("AB_READY", flush=True)
    for line in sys.stdin:
        r = stream(user(LONG_ASK), int(line))
        print("AB_JSON " + json.dumps({"decode_tok_s": decode_rate(r.tokens, r.first, r.last),
                                       "tokens": r.tokens}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", choices=["mlx", "llamacpp"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--workload", required=True, help="JSON of a Workload")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--serve", action="store_true",
                   help="stay up: one long decode per line read from stdin (its token count), "
                        "each answered with an AB_JSON line (scripts/bench_ab.py)")
    args = p.parse_args()
    work = Workload(**json.loads(args.workload))
    out: dict = {}
    if args.engine == "mlx":
        from bridge.engine import blas

        info = blas.enable()  # MLX_BRIDGE_BLAS=off gives the wheel's own BLAS
        out["blas"], out["blas_threads"] = info.name, info.threads
        out["matmul_gflops"] = matmul_gflops()
        stream = mlx_stream(args.model)
    else:
        stream = llamacpp_stream(args.model, args.threads)
    if args.serve:
        serve(stream)
        return
    out.update(measure(stream, None, work, cpu=time.process_time))
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("BENCH_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
