#!/usr/bin/env python3
"""What the fast-exp attention buys on an x86-64 CPU (bridge/engine/cpu_attention.py), against
MLX's own `scaled_dot_product_attention`, alternated in one run:

  exp      MLX's exp against the fused polynomial, one 9x20x424 score block: us
  op       one layer's attention for the shapes a model meets (SmolLM2's 9 query / 3 KV
           heads of 64): a decoding step of 1 and of 8 sequences, 20 new tokens over a
           424-token chat, whole prompts of 500 and 2,000 tokens (array masks, as the batch
           caches pass): us
  step     a whole decoding step of the model, batches of 1 / 4 / 8 at 64 / 160 / 400 tokens
           of context: ms
  prefill  the model over new tokens on the engine's batch cache (20 new over 48 and over 403
           cached, as a chat's turn 2 and turn 10; prompts of 500 and 2,000): ms
  greedy   60 greedy tokens for 5 prompts with each attention: how many are identical
Prints a table and writes JSON (--out). Run it on an idle machine; the load is recorded.

    python scripts/bench_attention.py --model DIR [--out attention.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import load_average, timed_ms  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain TCP in one paragraph.", "List five fruits.", "Why is the sky blue? " * 30]


def exp_costs() -> dict:
    import mlx.core as mx

    from bridge.engine.cpu_attention import exp_nonpositive

    x = -mx.abs(mx.random.normal((9, 20, 424)) * 5)
    mx.eval(x)
    return {"elements": x.size, "mlx_us": timed_ms(lambda: mx.exp(x), 50, 1e6),
            "fast_us": timed_ms(lambda: exp_nonpositive(x), 50, 1e6)}


def op_costs() -> list[dict]:
    import mlx.core as mx

    from bridge.engine.cpu_attention import attention

    def mlx(q, k, v, mask):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)

    def fast(q, k, v, mask):
        return attention(q, k, v, None, 0.125, mask)

    out = []
    for label, batch, n, s in (("decode, 1 sequence", 1, 1, 424),
                               ("decode, 8 sequences", 8, 1, 120),
                               ("20 new over 404", 1, 20, 424), ("prompt of 500", 1, 500, 500),
                               ("prompt of 2,000", 1, 2000, 2000)):
        q = mx.random.normal((batch, 9, n, 64))
        k, v = mx.random.normal((batch, 3, s, 64)), mx.random.normal((batch, 3, s, 64))
        mask = None if n == 1 else (mx.arange(s)[None] <= mx.arange(s - n, s)[:, None])[None, None]
        mx.eval(q, k, v)
        reps = 5 if n >= 500 else 30
        args = (q, k, v, mask)
        mlx_us = timed_ms(lambda args=args: mlx(*args), reps, 1e6)
        fast_us = timed_ms(lambda args=args: fast(*args), reps, 1e6)
        out.append({"shape": label, "batch": batch, "queries": n, "keys": s,
                    "mlx_us": mlx_us, "fast_us": fast_us})
    return out


def _use(model, fn) -> None:
    """Point the modules of the model's architecture at `fn`."""
    for name, module in list(sys.modules.items()):
        if (name.startswith("mlx_lm.models.") and name != "mlx_lm.models.base"
                and hasattr(module, "scaled_dot_product_attention")):
            module.scaled_dot_product_attention = fn


def step_costs(model, fns: dict) -> list[dict]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    out = []
    for context in (64, 160, 400):
        for batch in (1, 4, 8):
            row = {"context": context, "batch": batch}
            for tag, fn in fns.items():
                _use(model, fn)
                cache = make_prompt_cache(model)
                mx.eval(model(mx.array([[1] * context] * batch), cache=cache))
                inp = mx.array([[2]] * batch)
                row[f"{tag}_ms"] = timed_ms(lambda c=cache, x=inp: model(x, cache=c), 8)
            out.append(row)
    return out


def prefill_costs(model, fns: dict) -> list[dict]:
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

    def run(new: int, cached: int) -> float:
        cache = make_prompt_cache(model)
        if cached:
            model.model(mx.array([list(range(100, 100 + cached))]), cache=cache)
        cache = [BatchKVCache.merge([c]) for c in cache]
        mx.eval([c.state for c in cache])
        began = time.perf_counter()
        model.model(mx.array([list(range(300, 300 + new))]), cache=cache)
        mx.eval([c.state for c in cache])
        return (time.perf_counter() - began) * 1000

    out = []
    for new, cached in ((20, 48), (20, 403), (500, 0), (2000, 0)):
        row = {"new": new, "cached": cached}
        reps = 1 if new >= 2000 else 3
        for _ in range(2):  # alternated
            for tag, fn in fns.items():
                _use(model, fn)
                row.setdefault(f"{tag}_ms", []).append(
                    statistics.median(run(new, cached) for _ in range(reps)))
        out.append({**row, **{k: min(v) for k, v in row.items() if k.endswith("_ms")}})
    return out


def greedy_agreement(model, tokenizer, fns: dict) -> dict:
    from mlx_lm import stream_generate

    same = 0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        outs = []
        for fn in fns.values():
            _use(model, fn)
            outs.append([r.token for r in stream_generate(model, tokenizer, ids, max_tokens=60)])
        same += outs[0] == outs[1]
    return {"prompts": len(PROMPTS), "tokens": 60, "identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an MLX model directory (SmolLM2's import)")
    ap.add_argument("--out", type=Path, default=Path("attention.json"))
    args = ap.parse_args()

    from bridge.engine import blas

    info = blas.enable()
    from mlx_lm import load
    from mlx_lm.models import base

    from bridge.engine.cpu_attention import attention

    before = load_average()
    model, tokenizer = load(args.model)
    fns = {"mlx": base.scaled_dot_product_attention, "fast": attention}
    out = {"model": args.model, "blas": info.name, "blas_threads": info.threads,
           "exp": exp_costs(), "op": op_costs(), "step": step_costs(model, fns),
           "prefill": prefill_costs(model, fns), "greedy": greedy_agreement(model, tokenizer, fns)}
    out["load"] = [before, load_average()]
    _print(out)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


def _print(out: dict) -> None:
    e = out["exp"]
    print(f"model {out['model']}  BLAS {out['blas']} ({out['blas_threads']} threads)  load "
          f"{out['load'][0]} -> {out['load'][1]}")
    print(f"exp of {e['elements']:,} scores: MLX {e['mlx_us']:.0f} us, fused "
          f"{e['fast_us']:.0f} us ({e['mlx_us'] / e['fast_us']:.1f}x)")
    print(f"{'one layer attention':<22} {'MLX us':>9} {'fast us':>9} {'gain':>6}")
    for r in out["op"]:
        print(f"{r['shape']:<22} {r['mlx_us']:>9.0f} {r['fast_us']:>9.0f} "
              f"{r['mlx_us'] / r['fast_us']:>5.2f}x")
    print(f"{'decode step':<22} {'MLX ms':>9} {'fast ms':>9} {'gain':>6}")
    for r in out["step"]:
        label = f"batch {r['batch']}, context {r['context']}"
        print(f"{label:<22} {r['mlx_ms']:>9.1f} {r['fast_ms']:>9.1f} "
              f"{r['mlx_ms'] / r['fast_ms']:>5.2f}x")
    print(f"{'prefill':<22} {'MLX ms':>9} {'fast ms':>9} {'gain':>6}")
    for r in out["prefill"]:
        label = f"{r['new']} new, {r['cached']} cached"
        print(f"{label:<22} {r['mlx_ms']:>9.1f} {r['fast_ms']:>9.1f} "
              f"{r['mlx_ms'] / r['fast_ms']:>5.2f}x")
    g = out["greedy"]
    print(f"greedy: {g['identical']} of {g['prompts']} prompts identical over {g['tokens']} tokens")


if __name__ == "__main__":
    main()
