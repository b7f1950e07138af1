#!/usr/bin/env python3
"""Soak test: N clients for M minutes against a real `mlx-bridge serve` on loopback; stops by
itself.

Each client loops over a seeded mix of streamed and non-streamed /api/generate, /api/chat and
/v1/chat/completions, mid-stream hang-ups and bad requests (which must get a 4xx with an error
body). Meanwhile the server worker's RSS (VmRSS) and the engine's /health are sampled. Prints a
table (requests, errors, latency percentiles, RSS over time, warm-up and steady state separately)
and writes JSON. Exits 1 when a target is missed: any error, or steady-state RSS growth >= 5%.

    python scripts/soak.py --clients 2 --minutes 1             # the tiny test model, built here
    python scripts/soak.py --clients 8 --minutes 30 --out soak-30.json
    python scripts/soak.py --model DIR                          # any MLX model directory
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_common import free_port, percentile, rss_bytes, start_server, tree_pids  # noqa: E402

OPTIONS = {"temperature": 0.7, "num_predict": 32}
PROMPTS = ["Tell me about llamas.", "What is the capital of France?", "Write a haiku about rain.",
           "Count to ten.", "Why is the sky blue?", "Describe a cup of coffee."]
# (path, raw body): each must answer 4xx with an error object, never 5xx
BAD = [
    ("/api/generate", b"{not json"),
    ("/api/generate", b'["not", "an", "object"]'),
    ("/api/chat", b'{"model": "soak", "messages": "not a list"}'),
    ("/api/generate", b'{"model": "soak", "prompt": "x", "options": {"temperature": "hot"}}'),
    ("/api/generate", b'{"model": "no-such-model", "prompt": "x"}'),
    ("/v1/chat/completions",
     b'{"model": "soak", "messages": [{"role": "user"}], "max_tokens": -5}'),
]
MIX = [("generate", 3), ("generate_stream", 3), ("chat", 3), ("chat_stream", 4),
       ("openai_stream", 2), ("disconnect", 2), ("bad", 1)]


@dataclass
class Results:
    """What the clients saw, shared between their threads."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ttft: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, seconds: float, first: float | None = None) -> None:
        with self.lock:
            self.latency[kind].append(seconds)
            if first is not None:
                self.ttft[kind].append(first)

    def fail(self, kind: str, message: str) -> None:
        with self.lock:
            self.errors[kind].append(message[:300])

    def count(self) -> int:
        with self.lock:
            return sum(map(len, self.latency.values())) + sum(map(len, self.errors.values()))


class Client:
    """One simulated user: a session, a seeded random mix, until the deadline."""

    def __init__(self, url: str, index: int, deadline: float, results: Results, seed: int) -> None:
        self.url, self.deadline, self.results = url, deadline, results
        self.rng = random.Random(seed * 1000 + index)
        self.session = requests.Session()

    def run(self) -> None:
        kinds, weights = zip(*MIX, strict=True)
        while time.monotonic() < self.deadline:
            kind = self.rng.choices(kinds, weights)[0]
            started = time.perf_counter()
            try:
                first = getattr(self, kind)()
            except Exception as exc:  # anything unexpected is an error of the bridge, reported
                self.results.fail(kind, f"{type(exc).__name__}: {exc}")
                continue
            self.results.ok(kind, time.perf_counter() - started, first)

    def _post(self, path: str, body: dict, stream: bool = False) -> requests.Response:
        resp = self.session.post(self.url + path, json=body, stream=stream, timeout=300)
        if resp.status_code != 200:
            raise AssertionError(f"{path}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp

    def _native(self, path: str, stream: bool) -> float | None:
        prompt = self.rng.choice(PROMPTS)
        body = ({"prompt": prompt} if path == "/api/generate"
                else {"messages": [{"role": "user", "content": prompt}]})
        body.update(model="soak", stream=stream, options=OPTIONS)
        started = time.perf_counter()
        resp = self._post(path, body, stream)
        if not stream:
            assert resp.json()["done"] is True, resp.text[:200]
            return None
        first, last = None, {}
        for line in resp.iter_lines():
            first = first or time.perf_counter() - started
            last = json.loads(line)
            assert "error" not in last, last
        assert last.get("done") is True, f"stream ended without a final line: {last}"
        return first

    def generate(self) -> None:
        self._native("/api/generate", False)

    def generate_stream(self) -> float | None:
        return self._native("/api/generate", True)

    def chat(self) -> None:
        self._native("/api/chat", False)

    def chat_stream(self) -> float | None:
        return self._native("/api/chat", True)

    def openai_stream(self) -> float | None:
        body = {"model": "soak", "stream": True, "max_tokens": 32,
                "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}]}
        started, first, done = time.perf_counter(), None, False
        for line in self._post("/v1/chat/completions", body, True).iter_lines():
            if line.startswith(b"data: "):
                first = first or time.perf_counter() - started
                done = done or line == b"data: [DONE]"
                assert b'"error"' not in line, line
        assert done, "SSE stream ended without [DONE]"
        return first

    def disconnect(self) -> None:
        body = {"model": "soak", "prompt": self.rng.choice(PROMPTS),
                "options": {"num_predict": 2000}}
        after = self.rng.randint(1, 8)
        with self._post("/api/generate", body, True) as resp:
            for i, _ in enumerate(resp.iter_lines()):
                if i + 1 >= after:
                    break  # leaving the block closes the connection mid-stream

    def bad(self) -> None:
        path, raw = self.rng.choice(BAD)
        resp = self.session.post(self.url + path, data=raw, timeout=60,
                                 headers={"Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500, (
            f"{path} {raw[:60]!r}: HTTP {resp.status_code} {resp.text[:200]}")
        assert "error" in resp.json(), resp.text[:200]


class Sampler:
    """Every `every` seconds: the worker's RSS, the engine's load, the requests done so far."""

    def __init__(self, url: str, worker: int, results: Results, every: float, t0: float) -> None:
        self.url, self.worker, self.results, self.every, self.t0 = url, worker, results, every, t0
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> dict:
        try:
            engine = requests.get(self.url + "/health", timeout=10).json()["engine"]
        except (requests.RequestException, ValueError, KeyError):
            engine = {}
        s = {"t": round(time.monotonic() - self.t0, 1), "rss_kib": rss_bytes([self.worker]) // 1024,
             "active": engine.get("active"), "queued": engine.get("queued"),
             "requests": self.results.count()}
        self.samples.append(s)
        if not s["rss_kib"]:
            self.results.fail("worker", f"worker pid {self.worker} is gone (crashed or restarted)")
        print(f"  t={s['t']:7.1f}s  rss={s['rss_kib'] / 1024:8.1f} MiB  active={s['active']}  "
              f"queued={s['queued']}  requests={s['requests']}", flush=True)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rss_summary(samples: list[dict], warmup_s: float) -> dict:
    """RSS at start, after warm-up and at the end; steady-state growth and slope (KiB/min)."""
    steady = [s for s in samples if s["t"] >= warmup_s] or samples[-1:]
    head = steady[: max(1, len(steady) // 10)]  # average a few samples at each end: less noise
    tail = steady[-len(head):]
    first = sum(s["rss_kib"] for s in head) / len(head)
    last = sum(s["rss_kib"] for s in tail) / len(tail)
    slope = 0.0
    if len(steady) > 1:  # least-squares line through the steady-state samples
        ts, rs = [s["t"] for s in steady], [s["rss_kib"] for s in steady]
        mt, mr = sum(ts) / len(ts), sum(rs) / len(rs)
        var = sum((t - mt) ** 2 for t in ts)
        slope = (sum((t - mt) * (r - mr) for t, r in zip(ts, rs, strict=True)) / var * 60
                 if var else 0.0)
    return {"start_kib": samples[0]["rss_kib"], "after_warmup_kib": round(first),
            "end_kib": round(last), "max_kib": max(s["rss_kib"] for s in samples),
            "warmup_growth_pct": _pct(samples[0]["rss_kib"], first),
            "steady_growth_pct": _pct(first, last), "steady_slope_kib_per_min": round(slope, 1)}


def _pct(a: float, b: float) -> float:
    return round((b - a) / a * 100, 2) if a else 0.0


def report(results: Results, samples: list[dict], args: argparse.Namespace, seconds: float) -> dict:
    kinds = sorted(set(results.latency) | set(results.errors))
    rows = {}
    for kind in kinds:
        lat, ttft = results.latency[kind], results.ttft[kind]
        rows[kind] = {"ok": len(lat), "errors": len(results.errors[kind]),
                      **{f"p{p}_s": _round(percentile(lat, p)) for p in (50, 90, 99)},
                      "max_s": _round(max(lat) if lat else None),
                      "ttft_p50_s": _round(percentile(ttft, 50))}
    warmup = args.warmup if args.warmup is not None else round(min(120.0, seconds * 0.2), 1)
    summary = {"clients": args.clients, "minutes": args.minutes, "seconds": round(seconds, 1),
               "warmup_s": warmup, "requests": sum(r["ok"] + r["errors"] for r in rows.values()),
               "errors": sum(r["errors"] for r in rows.values()), "by_kind": rows,
               "error_samples": {k: v[:5] for k, v in results.errors.items() if v},
               "rss": rss_summary(samples, warmup), "samples": samples}
    summary["passed"] = summary["errors"] == 0 and summary["rss"]["steady_growth_pct"] < 5
    print(f"\n{'kind':16} {'ok':>6} {'err':>5} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} "
          f"{'max s':>7} {'ttft p50':>9}")
    for kind, r in rows.items():
        print(f"{kind:16} {r['ok']:6} {r['errors']:5} {_fmt(r['p50_s'])} {_fmt(r['p90_s'])} "
              f"{_fmt(r['p99_s'])} {_fmt(r['max_s'])} {_fmt(r['ttft_p50_s'], 9)}")
    rss = summary["rss"]
    print(f"\n{summary['requests']} requests in {seconds:.0f} s "
          f"({summary['requests'] / seconds:.1f}/s), "
          f"{summary['errors']} errors")
    print(f"worker RSS: start {rss['start_kib'] / 1024:.1f} MiB, after {warmup:.0f} s warm-up "
          f"{rss['after_warmup_kib'] / 1024:.1f} MiB ({rss['warmup_growth_pct']:+.1f}%), end "
          f"{rss['end_kib'] / 1024:.1f} MiB, max {rss['max_kib'] / 1024:.1f} MiB")
    print(f"steady state: {rss['steady_growth_pct']:+.2f}% "
          f"({rss['steady_slope_kib_per_min']:+.1f} KiB/min); "
          f"targets: 0 errors, < 5% -> {'PASS' if summary['passed'] else 'FAIL'}")
    for kind, msgs in summary["error_samples"].items():
        print(f"  {kind}: {msgs[0]}")
    return summary


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _fmt(x: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.3f}"


def serve(args: argparse.Namespace, tmp: Path):  # type: ignore[no-untyped-def]
    """Start `mlx-bridge serve` with the model mapped as "soak"; returns (server, worker pid)."""
    import yaml

    from bridge.testing import build_tiny_model

    model = args.model or str(build_tiny_model(tmp / "tiny"))
    mappings = tmp / "model_mappings.yaml"
    mappings.write_text(yaml.safe_dump({"models": {"soak": {"mlx": model, "backend": "mlx"}}}))
    port = free_port()
    cmd = [sys.executable, "-m", "bridge", "serve", "--port", str(port),
           "--mappings", str(mappings), "--home", str(tmp / "home"), "--upstream", "none"]
    server = start_server("bridge", cmd, {"HF_HUB_OFFLINE": "1"}, port,
                          lambda url: requests.get(url + "/health", timeout=2).ok, tmp)
    workers = [p for p in tree_pids(server.proc.pid) if p != server.proc.pid]
    return server, workers[0]


def settle(url: str, results: Results, timeout: float = 15.0) -> None:
    """After the clients stop, nothing may be left running or queued (hang-ups included)."""
    deadline = time.monotonic() + timeout
    engine: dict = {}
    while time.monotonic() < deadline:
        engine = requests.get(url + "/health", timeout=10).json()["engine"]
        if engine["active"] == 0 and engine["queued"] == 0:
            return
        time.sleep(0.2)
    results.fail("settle", f"work left running {timeout:.0f} s after the clients stopped: {engine}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", help="an MLX model directory "
                                        "(default: the tiny test model, built here)")
    parser.add_argument("--sample-every", type=float, default=5.0,
                        help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float,
                        help="seconds counted as warm-up (default: 20%%, at most 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlx-bridge-soak-") as tmp:
        server, worker = serve(args, Path(tmp))
        try:
            print(f"soak: {args.clients} clients x {args.minutes:g} min against {server.url} "
                  f"(worker pid {worker}, log {server.log})", flush=True)
            results = Results()
            t0 = time.monotonic()
            sampler = Sampler(server.url, worker, results, args.sample_every, t0)
            sampler.sample()
            sampler.start()
            deadline = t0 + args.minutes * 60
            threads = [threading.Thread(target=Client(server.url, i, deadline, results,
                                                      args.seed).run, daemon=True)
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.monotonic() - t0
            sampler.stop()
            settle(server.url, results)
            sampler.sample()
        finally:
            server.stop()
        log = server.log.read_text(errors="replace")
        if "Traceback" in log:
            results.fail("server_log", "the server log has a Traceback:\n"
                         + log[log.index("Traceback"):][:2000])
        if server.proc.returncode not in (0, None):
            results.fail("server_exit", f"server exited with {server.proc.returncode}")
    summary = report(results, sampler.samples, args, seconds)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
