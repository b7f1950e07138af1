#!/usr/bin/env python3
"""The sampler's cost per token: the bridge's (Ollama's order) against mlx-lm's make_sampler.

  sampler       one call on log-probabilities of the model's vocabulary width, 1 row and a
                batch of 8, per setting (Ollama's defaults: temperature 0.8, top_k 40, top_p 0.9)
  engine        the bridge's engine in this process with Ollama's default options (what a
                client that sends no options gets): the decode tok/s of 1 request and the sum
                of 8 concurrent requests' decode rates, with each sampler in turn (A/B
                alternated, median of the rounds)
Prints a table and writes JSON (--out).

    python scripts/bench_sampler.py --model DIR [--tokens 48] [--rounds 3] [--out sampler.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import QUESTIONS, finish_jobs, load_average  # noqa: E402

SETTINGS = {  # name: (temperature, top_k, top_p, min_p)
    "Ollama defaults (0.8, k40, p0.9)": (0.8, 40, 0.9, 0.0),
    "temperature 0.8 only": (0.8, 0, 1.0, 0.0),
    "top_p 0.9, no top_k": (0.8, 0, 0.9, 0.0),
    "greedy": (0.0, 40, 0.9, 0.0),
}


def mlx_lm_sampler(temperature: float, top_k: int, top_p: float, min_p: float):
    """mlx-lm's chain for the same settings (its 0 means off for top_p)."""
    from mlx_lm.sample_utils import make_sampler

    return make_sampler(temp=temperature, top_k=top_k, top_p=top_p if 0 < top_p < 1 else 0.0,
                        min_p=min_p)


def median_ms(fn, reps: int = 15) -> float:
    import mlx.core as mx

    times = []
    for _ in range(reps):
        began = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def sampler_costs(vocab: int) -> list[dict]:
    import mlx.core as mx

    from bridge.engine.sampling import make_sampler

    rows = []
    for batch in (1, 8):
        logits = mx.random.normal((batch, vocab)) * 3
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        mx.eval(logprobs)
        for name, settings in SETTINGS.items():
            ours, theirs = make_sampler(*settings), mlx_lm_sampler(*settings)
            rows.append({"batch": batch, "setting": name,
                         "mlx_lm_ms": median_ms(lambda s=theirs, x=logprobs: s(x)),
                         "bridge_ms": median_ms(lambda s=ours, x=logprobs: s(x))})
    return rows


def engine_rates(model: str, tokens: int, rounds: int) -> dict:
    """Generated tok/s at Ollama's default options, 1 and 8 requests, per sampler (A/B)."""
    from bridge.engine import Engine, prepare

    ours = prepare.make_sampler
    engine = Engine(num_parallel=8)
    engine.start()
    rates: dict = {"bridge": {"1": [], "8": []}, "mlx-lm": {"1": [], "8": []}}
    try:
        run_jobs(engine, model, [QUESTIONS[0]], tokens)  # load and warm up
        for r in range(rounds):
            for name, factory in (("bridge", ours), ("mlx-lm", mlx_lm_sampler)):
                prepare.make_sampler = factory
                engine.cache.models[model].samplers.clear()
                for clients in (1, 8):  # prompts new to the prompt cache in every run
                    asks = [f"{QUESTIONS[i % len(QUESTIONS)]} ({name}, {r}, {i})"
                            for i in range(clients)]
                    rates[name][str(clients)].append(run_jobs(engine, model, asks, tokens))
    finally:
        prepare.make_sampler = ours
        engine.stop()
    return rates


def run_jobs(engine, model: str, asks: list[str], tokens: int) -> float:
    """Submit one request per ask at once (default options but num_predict); the sum of their
    decode rates."""
    from bridge.engine import Job, PromptSpec
    from bridge.wire.options import Options

    jobs = [Job(model, "m", spec=PromptSpec(messages=[{"role": "user", "content": a}]),
                options=Options(num_predict=tokens)) for a in asks]
    ends = finish_jobs(engine, jobs)
    # The sum of each request's decode rate (Ollama's eval_count / eval_duration): one request's
    # decode tok/s, or a batch's per-step throughput. Sampled answers end at random lengths, so
    # tokens per wall second (the tail runs as a smaller batch) moves ±15% between rounds.
    return sum(e.eval_count / max(1e-9, e.eval_duration / 1e9) for e in ends)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="an MLX model directory (SmolLM2's import)")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("sampler.json"))
    args = ap.parse_args()

    from bridge.engine import blas

    info = blas.enable()
    from mlx_lm.utils import load_config

    config = load_config(Path(args.model))
    before = load_average()
    costs = sampler_costs(int(config["vocab_size"]))
    rates = engine_rates(args.model, args.tokens, args.rounds)
    out = {"model": args.model, "blas": info.name, "blas_threads": info.threads,
           "load": [before, load_average()], "sampler_ms": costs, "engine_tok_s": rates}
    print(f"model {args.model}  vocab {config['vocab_size']}  BLAS {info.name} "
          f"({info.threads} threads)  load {before} -> {out['load'][1]}")
    print(f"{'batch':>5} {'setting':<34} {'mlx-lm ms':>10} {'bridge ms':>10} {'ratio':>7}")
    for r in costs:
        print(f"{r['batch']:>5} {r['setting']:<34} {r['mlx_lm_ms']:>10.2f} {r['bridge_ms']:>10.2f}"
              f" {r['mlx_lm_ms'] / r['bridge_ms']:>6.1f}x")
    print("engine, Ollama's default options, decode tok/s summed over the requests (median of"
          " rounds):")
    for clients in ("1", "8"):
        ours = statistics.median(rates["bridge"][clients])
        theirs = statistics.median(rates["mlx-lm"][clients])
        print(f"  {clients} request(s): bridge sampler {ours:.1f}, mlx-lm sampler {theirs:.1f} "
              f"({ours / theirs:.2f}x)")
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
