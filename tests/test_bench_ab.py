"""The benchmark's alternated rounds (scripts/bench_ab.py): who runs when, on what questions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_ab  # noqa: E402


def test_eight_clients_alternate_with_the_same_questions_in_a_pair(monkeypatch) -> None:
    calls: list[tuple[str, int, int, int]] = []

    def aggregate(complete, clients: int, tokens: int, round_: int) -> float:
        calls.append((complete, clients, tokens, round_))
        return {"peer": 50.0, "bridge": 60.0}[complete] + round_ - 100

    monkeypatch.setattr(bench_ab, "aggregate", aggregate)
    monkeypatch.setattr(bench_ab, "IDLE", 0)
    out = bench_ab.run_ab_aggregate("peer", "bridge", 8, 48, 3)
    # A warm-up each, then A B, B A, A B: both servers get a pair's round (its questions).
    assert [(c, r) for c, _, _, r in calls] == [
        ("peer", 100), ("bridge", 100), ("peer", 101), ("bridge", 101),
        ("bridge", 102), ("peer", 102), ("peer", 103), ("bridge", 103)]
    assert all(n == 8 and t == 48 for _, n, t, _ in calls)
    assert out["peer_tok_s"] == [51.0, 52.0, 53.0]
    assert out["bridge_tok_s"] == [61.0, 62.0, 63.0]
    assert out["ratio"] == pytest.approx(62.0 / 52.0)
    assert out["clients"] == 8 and out["tokens"] == 48 and out["rounds"] == 3
