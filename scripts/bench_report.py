"""Benchmark output: a table of values, ratios against the issue's targets, JSON and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if abs(value) >= 10 else f"{value:.2f}{unit}"
    return f"{value}{unit}"


def _mb(value) -> float | None:
    return value / 2**20 if value else None


def rows(columns: dict[str, dict]) -> list[tuple[str, list]]:
    """(label, one value per column)."""
    def col(key, fn=lambda v: v):
        return [fn(c.get(key)) if c.get(key) is not None else None for c in columns.values()]

    clients = sorted({int(k) for c in columns.values() for k in c.get("aggregate_tok_s", {})})
    table = [
        ("BLAS", col("blas")),
        ("BLAS threads", col("blas_threads")),
        ("matmul rows padded to multiples of", col("row_block")),
        ("matmul f32 1024 GFLOP/s", col("matmul_gflops")),
        ("OLLAMA_NUM_PARALLEL", col("num_parallel")),
        ("first request TTFT ms (incl. load)", col("first_request_ms")),
        ("TTFT p50 ms", col("ttft_ms_p50")),
        ("TTFT p95 ms", col("ttft_ms_p95")),
        ("decode tok/s (1 stream)", col("decode_tok_s")),
        ("decode wall us/token", col("decode_tok_s", lambda v: 1e6 / v if v else None)),
        ("decode CPU us/token", col("decode_cpu_us_per_tok")),
        ("overhead run: tokens", col("overhead_tokens")),
        ("overhead run: wall us/token, best round", col("overhead_wall_us_per_tok")),
        ("overhead run: wall us/token, median round", col("overhead_wall_us_median")),
        ("overhead run: CPU us/token, best round", col("overhead_cpu_us_per_tok")),
        ("overhead run: CPU us/token, median round", col("overhead_cpu_us_median")),
    ]
    for n in clients:
        table.append((f"aggregate tok/s @{n}", [c.get("aggregate_tok_s",
                                                      {}).get(str(n)) for c in columns.values()]))
    table += [
        ("chat turns", col("chat_ttft_ms", lambda v: len(v) if v else None)),
        ("chat turn 1 TTFT ms", col("chat_ttft_ms", lambda v: v[0] if v else None)),
        ("chat turn 2 TTFT ms", col("chat_ttft_ms", lambda v: v[1] if v and len(v) > 1 else None)),
        ("chat last turn TTFT ms", col("chat_ttft_ms", lambda v: v[-1] if v else None)),
        ("peak RSS MB", col("peak_rss", _mb)),
        ("RSS before load MB", col("rss_before_load", _mb)),
        ("RSS after unload MB", col("rss_after_unload", _mb)),
        ("wall s", col("wall_s")),
    ]
    return table


def tok_s(values: list) -> str:
    """Rates of rounds, side by side."""
    return " ".join(_fmt(v) for v in values)


def _ratio(a, b):
    return a / b if a is not None and b else None


def _overhead(bridge: float | None, raw: float | None) -> float | None:
    """Microseconds per token the bridge adds, from two decode rates (tok/s)."""
    return 1e6 / bridge - 1e6 / raw if bridge and raw else None


def _minus(a, b):
    return a - b if a is not None and b is not None else None


def targets(columns: dict[str, dict]) -> list[tuple[str, float | None, str, bool | None]]:
    """(what, value, target, met)."""
    raw, br, peer = (columns.get("raw", {}), columns.get("bridge", {}),
                     columns.get("mlx_lm.server", {}))
    bundled = columns.get("raw (bundled BLAS)", {})
    agg = br.get("aggregate_tok_s", {})
    chat = br.get("chat_ttft_ms") or [None]
    checks = [
        ("bridge decode / raw decode", _ratio(br.get("decode_tok_s"), raw.get("decode_tok_s")),
         ">= 0.97",
         lambda v: v >= 0.97),
        ("bridge decode / raw, alternated rounds", (br.get("decode_ab") or {}).get("ratio"),
         ">= 0.97", lambda v: v >= 0.97),
        ("bridge TTFT p50 - raw TTFT p50 (ms)",
         None if br.get("ttft_ms_p50") is None or raw.get("ttft_ms_p50") is None
         else br["ttft_ms_p50"] - raw["ttft_ms_p50"], "<= 10", lambda v: v <= 10),
        ("bridge aggregate @8 / @1", _ratio(agg.get("8"), agg.get("1")), ">= 2.5",
         lambda v: v >= 2.5),
        ("bridge aggregate @8 / mlx_lm.server @8",
         _ratio(agg.get("8"), peer.get("aggregate_tok_s", {}).get("8")), ">= 1.2",
         lambda v: v >= 1.2),
        ("aggregate @8 / mlx_lm.server, alternated",
         (peer.get("aggregate_ab") or {}).get("ratio"), ">= 1.2", lambda v: v >= 1.2),
        ("overhead/token, wall us, best rounds",
         _minus(br.get("overhead_wall_us_per_tok"), raw.get("overhead_wall_us_per_tok"))
         if br.get("overhead_wall_us_per_tok") is not None
         else _overhead(br.get("decode_tok_s"), raw.get("decode_tok_s")), "<= 100",
         lambda v: v <= 100),
        ("overhead/token, CPU us, best rounds",
         _minus(br.get("overhead_cpu_us_per_tok"), raw.get("overhead_cpu_us_per_tok"))
         if br.get("overhead_cpu_us_per_tok") is not None
         else _minus(br.get("decode_cpu_us_per_tok"), raw.get("decode_cpu_us_per_tok")),
         "<= 100", lambda v: v <= 100),
        ("overhead/token, wall us, median rounds",
         _minus(br.get("overhead_wall_us_median"), raw.get("overhead_wall_us_median")), "info",
         None),
        ("bridge chat last / first turn TTFT", _ratio(chat[-1], chat[0]), "<= 1.5",
         lambda v: v <= 1.5),
        ("bridge chat last / turn-2 TTFT", _ratio(chat[-1], chat[1] if len(chat) > 1 else None),
         "<= 1.1", lambda v: v <= 1.1),
        ("bridge RSS after unload / before load",
         _ratio(br.get("rss_after_unload"), br.get("rss_before_load")), "<= 1.10",
         lambda v: v <= 1.10),
        ("fast / bundled BLAS: matmul", _ratio(raw.get("matmul_gflops"),
                                               bundled.get("matmul_gflops")), "info",
         None),
        ("fast / bundled BLAS: raw decode", _ratio(raw.get("decode_tok_s"),
                                                   bundled.get("decode_tok_s")), "info",
         None),
        ("bundled / fast BLAS: raw TTFT p50", _ratio(bundled.get("ttft_ms_p50"),
                                                     raw.get("ttft_ms_p50")), "info",
         None),
    ]
    return [(what, v, target, None if v is None or ok is None else ok(v)) for what, v, target,
            ok in checks]


def report(columns: dict[str, dict], meta: dict, out_dir: Path, kv: dict | None = None,
           spec: dict | None = None, lookup: dict | None = None) -> None:
    names = list(columns)
    table = rows(columns)
    width = max(len(label) for label, _ in table)
    load = " -> ".join(_fmt(v) for v in meta.get("load_average") or [])
    print(f"\nmodel: {meta['model']}   cpus: {meta['cpus']}   {meta['time']}   load: {load}")
    print(" " * width + "".join(f"{n:>22}" for n in names))
    for label, values in table:
        print(f"{label:<{width}}" + "".join(f"{_fmt(v):>22}" for v in values))
    print("\nratios against the targets:")
    checks = targets(columns)
    for what, value, target, met in checks:
        mark = {True: "ok", False: "MISSED", None: ""}[met]
        print(f"  {what:<42} {_fmt(value):>10}   target {target:<8} {mark}")
    ab = columns.get("bridge", {}).get("decode_ab")
    if ab:
        print(f"\nsingle-stream decode in alternated rounds ({ab['rounds']} pairs of "
              f"{ab['tokens']} tokens, tok/s): raw {tok_s(ab['raw_tok_s'])}; bridge "
              f"{tok_s(ab['bridge_tok_s'])}; per-pair ratios {tok_s(ab['pair_ratios'])}")
    agg_ab = columns.get("mlx_lm.server", {}).get("aggregate_ab")
    if agg_ab:
        print(f"\n{agg_ab['clients']} clients in alternated rounds ({agg_ab['rounds']} pairs of "
              f"{agg_ab['tokens']} tokens a client, tok/s): mlx_lm.server "
              f"{tok_s(agg_ab['peer_tok_s'])}; bridge {tok_s(agg_ab['bridge_tok_s'])}; "
              f"per-pair ratios {tok_s(agg_ab['pair_ratios'])}")
    if kv:
        print_kv(kv)
    if spec:
        print(f"\nspeculative decoding (draft {spec.get('draft_layers') or spec['draft']}"
              f"{' layers' if spec.get('draft_layers') else ''}, a lone greedy stream): "
              f"plain {_fmt(spec['plain_tok_s'])} tok/s, speculative "
              f"{_fmt(spec['speculative_tok_s'])} tok/s ({_fmt(spec['speedup'])}x), "
              f"acceptance {_fmt(spec['acceptance'])}, identical output: {spec['identical']}")
    if lookup:
        print_lookup(lookup)
    data = {"meta": meta, "columns": columns, "kv_cache": kv, "speculative": spec,
            "prompt_lookup": lookup,
            "targets": [{"what": w, "value": v, "target": t, "met": m} for w, v, t, m in checks]}
    (out_dir / "bench.json").write_text(json.dumps(data, indent=2))
    print(f"\nwrote {out_dir / 'bench.json'}")
    chart(columns, meta, out_dir / "bench.png")


def print_lookup(lookup: dict) -> None:
    """One line per prompt: plain against prompt-lookup drafting (a lone greedy stream)."""
    print(f"\nprompt-lookup drafting (ngram {lookup.get('ngram')}, "
          f"{lookup.get('lookup_tokens')} tokens), a lone greedy stream:")
    print(f"  {'prompt':<8} {'tokens':>6} {'plain tok/s':>12} {'lookup tok/s':>13} "
          f"{'speedup':>8} {'CPU speedup':>12} {'from draft':>11} {'proposals kept':>15} "
          f"{'identical':>10}")
    for r in lookup["runs"]:
        print(f"  {r['prompt']:<8} {r['tokens']:>6} {_fmt(r['plain_tok_s']):>12} "
              f"{_fmt(r['speculative_tok_s']):>13} {_fmt(r['speedup']):>8} "
              f"{_fmt(r.get('cpu_speedup')):>12} "
              f"{_fmt(r['acceptance']):>11} {_fmt(r['proposed_accepted']):>15} "
              f"{str(r['identical']):>10}")


def print_kv(kv: dict) -> None:
    """One line per OLLAMA_KV_CACHE_TYPE (4 greedy requests batched, through the engine)."""
    print("\nKV cache (OLLAMA_KV_CACHE_TYPE), 4 requests batched:")
    print(f"  {'type':<6} {'bits':>5} {'MB / 1k tokens':>15} {'prompt cache MB':>16} "
          f"{'aggregate tok/s':>16} {'greedy = f16':>13}")
    for name, r in kv.items():
        print(f"  {name:<6} {_fmt(r['kv_bits']):>5} {_fmt(r['kv_mb_per_1k_tokens']):>15} "
              f"{_fmt(r['prompt_cache_mb']):>16} {_fmt(r['aggregate_tok_s']):>16} "
              f"{_fmt(r['agreement_with_f16']):>13}")


def chart(columns: dict[str, dict], meta: dict, path: Path) -> None:
    """Four panels: TTFT, decode, aggregate by clients, TTFT per chat turn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return
    names = list(columns)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.bar(names, [columns[n].get("ttft_ms_p50") or 0 for n in names])
    ax.set_title("time to first token, p50 (ms)")
    ax = axes[0][1]
    ax.bar(names, [columns[n].get("decode_tok_s") or 0 for n in names])
    ax.set_title("single-stream decode (tok/s)")
    ax = axes[1][0]
    for n in names:
        agg = columns[n].get("aggregate_tok_s", {})
        xs = sorted(int(k) for k in agg)
        ax.plot(xs, [agg[str(x)] for x in xs], marker="o", label=n)
    ax.set_title("aggregate tok/s by concurrent clients")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    for n in names:
        turns = columns[n].get("chat_ttft_ms") or []
        ax.plot(range(1, len(turns) + 1), turns, marker="o", label=n)
    ax.set_title("growing chat: TTFT per turn (ms)")
    ax.legend(fontsize=8)
    for row in axes:
        for a in row:
            a.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"mlx-bridge benchmark: {meta['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
