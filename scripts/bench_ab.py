"""Single-stream decode, raw mlx-lm against the bridge, in alternating rounds.

The benchmark's columns run one after another, a minute or more apart; on a VM whose speed
drifts (rerun XVI: raw mlx-lm's decode moved 11.7-16.4 tok/s between runs 3 minutes apart) that
drift lands in the ratio. Here both stay up and take turns, A B B A ..., and the ratio is the
median of the per-pair ratios: what drifts over minutes cancels out (for an even count the
mean of the middle two; the lower one, a nearest-rank median, read 0.95 for pairs 0.73 0.95
0.97 1.26). Each round starts after IDLE seconds of nothing: the bridge's BLAS threads follow
other work's CPU use, and the other engine's round just before is other work (1 thread until
~4 s after it ends: blas.ThreadFollower), which a user's request on an idle machine would not
find.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_common import LONG_ASK, decode_rate, user
from bench_measure import Complete, Stream, aggregate

HERE = Path(__file__).resolve().parent
IDLE = 5.0  # seconds before each round (TAU 1.5 s from 2 busy cores to < 0.25: 3.1 s, + a reading)


class RawWorker:
    """bench_raw.py --serve: mlx-lm's stream_generate in its own process, a round per request."""

    def __init__(self, model: str) -> None:
        cmd = [sys.executable, str(HERE / "bench_raw.py"), "--engine", "mlx", "--model", model,
               "--workload", "{}", "--serve"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self._read("AB_READY")

    def _read(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise RuntimeError(f"the raw worker ended ({self.proc.wait()}) before {prefix}")

    def decode(self, tokens: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{tokens}\n")
        self.proc.stdin.flush()
        return json.loads(self._read("AB_JSON "))["decode_tok_s"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def alternate(raw: Callable[[], float], bridge: Callable[[], float], rounds: int) -> dict:
    """A warm-up each, then `rounds` pairs in A B / B A order; a rate (tok/s) per round."""
    def after_idle(run: Callable[[], float]) -> float:
        time.sleep(IDLE)
        return run()

    raw(), bridge()
    raws, bridges = [], []
    for r in range(rounds):
        first, second = (raw, bridge) if r % 2 == 0 else (bridge, raw)
        a, b = after_idle(first), after_idle(second)
        raws.append(a if first is raw else b)
        bridges.append(b if first is raw else a)
    pairs = [b / a for a, b in zip(raws, bridges, strict=True) if a and b]
    return {"rounds": rounds, "raw_tok_s": raws, "bridge_tok_s": bridges, "pair_ratios": pairs,
            "ratio": statistics.median(pairs) if pairs else None}


def run_ab(model: str, stream: Stream, rounds: int, tokens: int) -> dict:
    """The bridge's rounds through `stream` (its /api/chat), raw's in a worker beside it."""
    worker = RawWorker(model)
    try:
        def bridge() -> float:
            r = stream(user(LONG_ASK), tokens)
            return decode_rate(r.tokens, r.first, r.last) or 0.0

        return {"tokens": tokens, **alternate(lambda: worker.decode(tokens), bridge, rounds)}
    finally:
        worker.close()


def run_ab_aggregate(peer: Complete, bridge: Complete, clients: int, tokens: int,
                     rounds: int) -> dict:
    """`clients` requests at once, mlx_lm.server's rounds alternated with the bridge's (both up):
    its @8 and the bridge's, read in columns minutes apart, moved 45.9-65.1 and 61.5-75.4 tok/s
    between runs on one VM. Both servers get the same new prompts in a pair (round numbers from
    100; the columns used 0-3)."""
    calls = itertools.count()  # alternate() runs the two in pairs (warm-up first): 2k, 2k+1

    def one(complete: Complete) -> Callable[[], float]:
        return lambda: aggregate(complete, clients, tokens, 100 + next(calls) // 2)

    out = alternate(one(peer), one(bridge), rounds)
    return {"clients": clients, "tokens": tokens, "rounds": rounds,
            "peer_tok_s": out["raw_tok_s"], "bridge_tok_s": out["bridge_tok_s"],
            "pair_ratios": out["pair_ratios"], "ratio": out["ratio"]}
