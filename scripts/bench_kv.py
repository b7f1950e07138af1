"""Benchmark worker: the bridge's engine per KV-cache type (OLLAMA_KV_CACHE_TYPE), batched.

For each type: KV bytes per 1k tokens of context, the prompt cache's bytes after the run,
aggregate decode tok/s of 4 concurrent greedy requests, and greedy agreement with f16 (the
share of generated tokens equal to f16's, position by position). Prints BENCH_JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import QUESTIONS, finish_jobs  # noqa: E402

from bridge.engine import Engine, Job, PromptSpec  # noqa: E402
from bridge.wire.options import Options  # noqa: E402


def run(model: str, kv: str, tokens: int) -> dict:
    engine = Engine(kv_cache_type=kv, num_parallel=4)
    engine.start()
    try:
        warm = Job(model, "m")
        engine.submit(warm)
        warm.events.get(timeout=600)
        jobs = [Job(model, "m", spec=PromptSpec(messages=[{"role": "user", "content": q}]),
                    options=Options(temperature=0, num_predict=tokens)) for q in QUESTIONS[:4]]
        started = time.perf_counter()
        outputs = [e.context[e.prompt_eval_count:] for e in finish_jobs(engine, jobs)]
        elapsed = time.perf_counter() - started
        loaded = engine.cache.models[model]
        return {"kv_bits": loaded.kv_bits, "kv_mb_per_1k_tokens":
                loaded.kv_bytes_per_token * 1000 / 2**20,
                "prompt_cache_mb": engine.prompts.nbytes / 2**20,
                "aggregate_tok_s": sum(len(o) for o in outputs) / elapsed, "outputs": outputs}
    finally:
        engine.stop()


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for sa, sb in zip(a, b, strict=True) for x, y in zip(sa, sb, strict=False))
    return same / max(1, sum(len(s) for s in a))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--types", default="f16,q8_0,q4_0")
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args()
    results = {kv: run(args.model, kv, args.tokens) for kv in args.types.split(",")}
    base = results.get("f16")
    for r in results.values():
        r["agreement_with_f16"] = agreement(base["outputs"], r["outputs"]) if base else None
    for r in results.values():
        del r["outputs"]
    print("BENCH_JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
