#!/usr/bin/env python3
"""What the few-row kernel buys (bridge/engine/blas_rows.py), against OpenBLAS's sgemm,
alternated in one process (the kernel's row count is switched between rounds):

  matmul   every float32 matmul of one decoding step (each linear layer and the tied output
           head, weights streamed from memory) for 1..16 rows: ms, sgemm against the kernel
  step     one decoding step of the whole model for batches of 1..16 sequences: ms, with the
           kernel at its default row count against off (rows not padded: the model as loaded)
  engine   the bridge's engine in this process: one greedy stream alone, and 8 at once (fresh
           prompts; the first ends early, as real requests do): generated tokens per second,
           default against off, median of the rounds
Prints a table and writes JSON (--out). Run it on an idle machine; the load is recorded.

    python scripts/bench_gemv.py --model DIR [--rounds 3] [--out gemv.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import QUESTIONS, finish_jobs, load_average, timed_ms  # noqa: E402


def shim_switch(blas_path: str) -> Callable[[int], None]:
    """A function setting the loaded kernel's row count (0: every matmul on sgemm); only between
    evaluations: no matmul may run while it changes."""
    from bridge.engine import blas_rows

    path = blas_rows.shim_library()
    if path is None:
        raise SystemExit("the few-row kernel is not built here (no C compiler?)")
    return ctypes.CDLL(str(path)).mlx_bridge_rows_set_max


def matmul_costs(model, set_rows, rows: tuple[int, ...], rounds: int) -> list[dict]:
    """Every weight of a decoding step times `n` rows, on sgemm and on the kernel (alternated)."""
    import mlx.core as mx

    weights = [m.weight for _, m in model.named_modules() if type(m).__name__ == "Linear"]
    if getattr(model.args, "tie_word_embeddings", False):
        weights.append(model.model.embed_tokens.weight)
    out = []
    for n in rows:
        xs = {w.shape[1]: mx.random.normal((n, w.shape[1])) for w in weights}
        mx.eval(list(xs.values()))
        times: dict[str, list[float]] = {"sgemm_ms": [], "kernel_ms": []}
        for _ in range(rounds):
            for name, count in (("sgemm_ms", 0), ("kernel_ms", max(rows))):
                set_rows(count)
                times[name].append(timed_ms(lambda xs=xs: [xs[w.shape[1]] @ w.T
                                                          for w in weights], 3))
        out.append({"rows": n, **{k: statistics.median(v) for k, v in times.items()}})
    return out


def step_costs(model, set_rows, default: int, batches: tuple[int, ...], rounds: int,
               context: int = 80) -> list[dict]:
    """One decoding step, `context` tokens cached, the kernel at `default` rows against off."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    out = []
    for batch in batches:
        times: dict[str, list[float]] = {"off_ms": [], "default_ms": []}
        for _ in range(rounds):
            for name, count in (("off_ms", 0), ("default_ms", default)):
                set_rows(count)
                cache = make_prompt_cache(model)
                mx.eval(model(mx.array([[1] * context] * batch), cache=cache))
                tokens = mx.array([[2]] * batch)
                times[name].append(timed_ms(lambda c=cache, t=tokens: model(t, cache=c), 6))
        out.append({"batch": batch, **{k: statistics.median(v) for k, v in times.items()}})
    set_rows(default)
    return out


def engine_runs(model: str, set_rows, default: int, tokens: int, rounds: int) -> dict:
    """The engine in this process: 1 and 8 greedy requests at once, default rows against off."""
    from bridge.engine import Engine, Job, PromptSpec
    from bridge.wire.options import Options

    engine = Engine(num_parallel=8)
    engine.start()
    runs: dict = {f"{name}@{n}": [] for n in (1, 8) for name in ("default", "off")}

    def run(tag: str, clients: int) -> float:
        jobs = [Job(model, "m", spec=PromptSpec(messages=[{"role": "user", "content":
                    f"{QUESTIONS[i % len(QUESTIONS)]} ({tag}, client {i})"}]),
                    options=Options(temperature=0, num_predict=tokens)) for i in range(clients)]
        began = time.perf_counter()
        ends = finish_jobs(engine, jobs)
        return sum(e.eval_count for e in ends) / (time.perf_counter() - began)

    try:
        run("warm-up", 8)
        for r in range(rounds):
            for clients in (1, 8):
                arms = (("off", 0), ("default", default))
                for name, count in arms if r % 2 == 0 else arms[::-1]:  # A B, then B A
                    set_rows(count)  # the engine is idle between runs: no matmul in flight
                    if engine.row_padding is not None:  # off pads rows again, as before
                        engine.row_padding.gemv_rows = count
                    # the same prompts for both: answers of other lengths weigh otherwise
                    runs[f"{name}@{clients}"].append(run(f"round {r}", clients))
    finally:
        set_rows(default)
        engine.stop()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an MLX model directory (SmolLM2's import)")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("gemv.json"))
    args = ap.parse_args()

    from bridge.engine import blas

    info = blas.enable()
    if not info.gemv_rows:
        raise SystemExit(f"the kernel is off here (blas={info.name}, MLX_BRIDGE_GEMV_ROWS?)")
    set_rows = shim_switch(info.path)
    from mlx_lm import load

    before = load_average()
    model, _ = load(args.model)
    matmuls = matmul_costs(model, set_rows, (1, 2, 3, 4, 6, 8, 12, 16), args.rounds)
    steps = step_costs(model, set_rows, info.gemv_rows, (1, 2, 4, 8, 16), args.rounds)
    del model
    runs = engine_runs(args.model, set_rows, info.gemv_rows, args.tokens, args.rounds)
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {"model": args.model, "blas": info.name, "core": info.detail,
           "blas_threads": info.threads, "gemv_rows": info.gemv_rows,
           "load": [before, load_average()], "matmul": matmuls, "step": steps, "engine": runs,
           "engine_median": med}
    print(f"model {args.model}  BLAS {info.name} {info.detail} ({info.threads} threads), "
          f"default kernel rows {info.gemv_rows}  load {before} -> {out['load'][1]}")
    print(f"{'rows':>4} {'step matmuls sgemm ms':>22} {'kernel ms':>10} {'gain':>6}")
    for r in matmuls:
        print(f"{r['rows']:>4} {r['sgemm_ms']:>22.1f} {r['kernel_ms']:>10.1f}"
              f" {r['sgemm_ms'] / r['kernel_ms']:>5.2f}x")
    print(f"{'batch':>5} {'decode step off ms':>19} {'default ms':>11} {'gain':>6}")
    for r in steps:
        print(f"{r['batch']:>5} {r['off_ms']:>19.1f} {r['default_ms']:>11.1f}"
              f" {r['off_ms'] / r['default_ms']:>5.2f}x")
    for n in (1, 8):
        print(f"engine, {n} greedy request(s) at once (median of rounds): default "
              f"{med[f'default@{n}']:.1f} tok/s, off {med[f'off@{n}']:.1f} tok/s "
              f"({med[f'default@{n}'] / med[f'off@{n}']:.2f}x)")
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
