#!/usr/bin/env python3
"""What padding the rows of CPU matmuls buys (bridge/engine/rowpad.py), padded against plain,
alternated in one run:

  matmul   the model's MLP matmuls of every layer (weights streamed from memory, as in a
           decoding step) for 1..16 rows: ms per pass
  step     one decoding step of the whole model for batches of 1..10 sequences: ms
  engine   the bridge's engine in this process, 8 concurrent greedy requests with fresh prompts
           (the first ends early, as real requests do): generated tokens per wall second and
           the median step time (eval_duration / eval_count), median of the rounds
Prints a table and writes JSON (--out). Run it on an idle machine; the load is recorded.

    python scripts/bench_rowpad.py --model DIR [--rounds 3] [--out rowpad.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import QUESTIONS, finish_jobs, load_average, timed_ms  # noqa: E402


def matmul_costs(model, padding, rows: range) -> list[dict]:
    """The MLP matmuls of every layer (each weight read from memory once per pass)."""
    import mlx.core as mx

    from bridge.engine.rowpad import padded

    layers = [m for _, m in model.named_modules() if type(m).__name__ == "MLP"]
    weights = [lin.weight for mlp in layers for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    out = []
    for n in rows:
        xs = {w.shape[1]: mx.random.normal((n, w.shape[1])) for w in weights}
        mx.eval(list(xs.values()))

        def plain(xs=xs):
            return [xs[w.shape[1]] @ w.T for w in weights]

        def pad(xs=xs):
            return [padded(xs[w.shape[1]], padding, lambda x, w=w: x @ w.T) for w in weights]

        out.append({"rows": n, "padded_to": padding.rows(n), "plain_ms": timed_ms(plain, 5),
                    "padded_ms": timed_ms(pad, 5)})
    return out


def step_costs(model, padding, batches: range, context: int = 80) -> list[dict]:
    """One decoding step of the model, `context` tokens already cached, plain then padded."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    block = padding.block
    out = []
    for batch in batches:
        row = {"batch": batch, "padded_to": padding.rows(batch)}
        for name, size in (("plain_ms", 1), ("padded_ms", block)):
            padding.block = size  # a block of 1 pads nothing
            cache = make_prompt_cache(model)
            mx.eval(model(mx.array([[1] * context] * batch), cache=cache))
            tokens = mx.array([[2]] * batch)
            row[name] = timed_ms(lambda c=cache, t=tokens: model(t, cache=c), 10)
        padding.block = block
        out.append(row)
    return out


def engine_runs(model: str, tokens: int, rounds: int) -> dict:
    """8 greedy requests at once in the bridge's engine, row padding on and off (A/B)."""
    from bridge.engine import Engine, Job, PromptSpec
    from bridge.wire.options import Options

    engine = Engine(num_parallel=8)
    engine.start()
    runs: dict = {"padded": [], "plain": []}

    def run(tag: str) -> dict:
        jobs = [Job(model, "m", spec=PromptSpec(messages=[{"role": "user", "content":
                    f"{QUESTIONS[i % len(QUESTIONS)]} ({tag}, client {i})"}]),
                    options=Options(temperature=0, num_predict=tokens)) for i in range(8)]
        began = time.perf_counter()
        ends = finish_jobs(engine, jobs)
        wall = time.perf_counter() - began
        steps = [e.eval_duration / 1e6 / e.eval_count for e in ends if e.eval_count]
        return {"tok_s": sum(e.eval_count for e in ends) / wall,
                "step_ms": statistics.median(steps), "counts": [e.eval_count for e in ends]}

    try:
        run("warm-up")
        padding = engine.row_padding
        if padding is None:
            raise SystemExit("no row padding in this engine (not OpenBLAS on x86-64 Linux, or "
                             "MLX_BRIDGE_ROW_PAD=off)")
        block = padding.block
        for r in range(rounds):
            for name, size in (("padded", block), ("plain", 1)):
                padding.block = size
                runs[name].append(run(f"{name} {r}"))
        padding.block = block
    finally:
        engine.stop()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an MLX model directory (SmolLM2's import)")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("rowpad.json"))
    args = ap.parse_args()

    from bridge.engine import blas

    info = blas.enable()
    from mlx_lm import load

    from bridge.engine.rowpad import RowPadding, install

    before = load_average()
    model, _ = load(args.model)
    padding = RowPadding(info.threads or 1)
    install(model, padding)
    matmuls = matmul_costs(model, padding, range(1, 17))
    steps = step_costs(model, padding, range(1, 11))
    del model
    runs = engine_runs(args.model, args.tokens, args.rounds)
    out = {"model": args.model, "blas": info.name, "blas_threads": info.threads,
           "block": padding.block, "load": [before, load_average()], "matmul": matmuls,
           "step": steps, "engine": runs}
    print(f"model {args.model}  BLAS {info.name} ({info.threads} threads, rows padded to "
          f"multiples of {padding.block})  load {before} -> {out['load'][1]}")
    print(f"{'rows':>4} {'as':>4} {'MLP matmuls plain ms':>21} {'padded ms':>10} {'gain':>6}")
    for r in matmuls:
        print(f"{r['rows']:>4} {r['padded_to']:>4} {r['plain_ms']:>21.1f} {r['padded_ms']:>10.1f}"
              f" {r['plain_ms'] / r['padded_ms']:>5.2f}x")
    print(f"{'batch':>5} {'as':>4} {'decode step plain ms':>21} {'padded ms':>10} {'gain':>6}")
    for r in steps:
        print(f"{r['batch']:>5} {r['padded_to']:>4} {r['plain_ms']:>21.1f} {r['padded_ms']:>10.1f}"
              f" {r['plain_ms'] / r['padded_ms']:>5.2f}x")
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("tok_s", "step_ms")}
           for k, v in runs.items()}
    print("engine, 8 greedy requests at once (median of rounds): "
          f"padded {med['padded']['tok_s']:.1f} tok/s, step {med['padded']['step_ms']:.1f} ms; "
          f"plain {med['plain']['tok_s']:.1f} tok/s, step {med['plain']['step_ms']:.1f} ms "
          f"({med['padded']['tok_s'] / med['plain']['tok_s']:.2f}x)")
    out["engine_median"] = med
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
