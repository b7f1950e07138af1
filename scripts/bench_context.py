#!/usr/bin/env python3
"""What a longer context costs a new chat turn, in raw mlx-lm (no server), on the bridge's BLAS.

A growing chat through the bridge prefills only the new turn (its earlier tokens come from the
prompt cache), yet turn 10 still takes longer than turn 2. This measures why, without the
bridge in the way:
  new turn      the same 22 new tokens prefilled after 40, 200, 400 cached tokens, then the
                first token sampled (what a chat turn's TTFT is made of), raw mlx-lm
  attention     mx.fast.scaled_dot_product_attention for those 22 queries over the cached keys,
                all layers (SmolLM2's 9 query heads, 3 KV heads, 64 dims, 30 layers)
  exp           MLX's CPU exp per element against an add and NumPy's exp: the softmax of the
                attention (and SiLU's sigmoid) is where a CPU spends the extra time
Prints a table and writes JSON (--out).

    python scripts/bench_context.py --model DIR [--out context.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import load_average  # noqa: E402

NEW_TOKENS = 22  # a short question plus the chat template's turn markers
CONTEXTS = (40, 200, 400)


def best_ms(fn, reps: int = 3) -> float:
    """Fastest of `reps` runs of fn (which evaluates its own work), in ms."""
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times) * 1000


def new_turn(model, context: int, new: list[int]) -> float:
    """Prefill `new` after `context` cached tokens and sample one token (ms, best of 3)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    rng = random.Random(context)
    cache = make_prompt_cache(model)
    model(mx.array([[rng.randrange(100, 30000) for _ in range(context)]]), cache=cache)
    mx.eval([c.state for c in cache])

    def turn() -> None:
        for _ in generate_step(mx.array(new), model, prompt_cache=copy.deepcopy(cache),
                               max_tokens=1):
            break
        mx.synchronize()  # generate_step queued the next step: not left for the next repeat

    return best_ms(turn)


def attention(context: int, layers: int = 30) -> float:
    """SDPA of NEW_TOKENS causal queries over context + NEW_TOKENS keys, `layers` times (ms)."""
    import mlx.core as mx

    keys = context + NEW_TOKENS
    q = mx.random.normal((1, 9, NEW_TOKENS, 64))
    k = mx.random.normal((1, 3, keys, 64))
    v = mx.random.normal((1, 3, keys, 64))
    mx.eval(q, k, v)
    return best_ms(lambda: mx.eval([mx.fast.scaled_dot_product_attention(
        q, k, v, scale=0.125, mask="causal") for _ in range(layers)]))


def per_element_ns(n: int = 2_500_000) -> dict[str, float]:
    """ns per element: MLX exp, MLX add, MLX sigmoid, NumPy exp (float32)."""
    import mlx.core as mx
    import numpy as np

    x = mx.random.normal((n,))
    mx.eval(x)
    xn = np.array(x)
    return {
        "mlx exp": best_ms(lambda: mx.eval(mx.exp(x))) * 1e6 / n,
        "mlx sigmoid": best_ms(lambda: mx.eval(mx.sigmoid(x))) * 1e6 / n,
        "mlx add": best_ms(lambda: mx.eval(x + 1)) * 1e6 / n,
        "numpy exp": best_ms(lambda: np.exp(xn)) * 1e6 / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an MLX model directory (SmolLM2's import)")
    ap.add_argument("--out", type=Path, default=Path("context.json"))
    args = ap.parse_args()

    from bridge.engine import blas

    info = blas.enable()  # before MLX's first matmul: the same BLAS as the bridge
    from mlx_lm import load

    model, _ = load(args.model)
    load_before = load_average()
    new = [random.Random(0).randrange(100, 30000) for _ in range(NEW_TOKENS)]
    new_turn(model, CONTEXTS[0], new)  # compiles MLX's kernels for these shapes
    rows = [{"context": c, "new_turn_ms": new_turn(model, c, new),
             "attention_ms": attention(c)} for c in CONTEXTS]
    elements = per_element_ns()
    out = {"model": args.model, "blas": info.name, "blas_threads": info.threads,
           "new_tokens": NEW_TOKENS, "load": [load_before, load_average()], "rows": rows,
           "ns_per_element": elements}
    print(f"model {args.model}  BLAS {info.name} ({info.threads} threads)  load "
          f"{load_before} -> {out['load'][1]}")
    print(f"{'cached tokens':>14} {'new turn ms':>12} {'attention ms':>13}")
    for r in rows:
        print(f"{r['context']:>14} {r['new_turn_ms']:>12.1f} {r['attention_ms']:>13.1f}")
    first, last = rows[0], rows[-1]
    grew = last["new_turn_ms"] - first["new_turn_ms"]
    share = (last["attention_ms"] - first["attention_ms"]) / grew if grew > 0 else None
    print(f"new turn {last['context']} / {first['context']} cached: "
          f"{last['new_turn_ms'] / first['new_turn_ms']:.2f}x; the attention's growth is "
          + (f"{share:.0%} of the turn's" if share is not None else "all of it (no growth)"))
    print("ns per float32 element: " + ", ".join(f"{k} {v:.2f}" for k, v in elements.items()))
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
