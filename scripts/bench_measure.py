"""The measurements, for any engine that can stream a chat: TTFT, decode, aggregate,
a growing chat."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from bench_common import LONG_ASK, QUESTIONS, Workload, decode_rate, percentile, user


@dataclass
class Result:
    """One streamed answer, timed by the client."""

    ttft: float  # seconds from sending to the first token
    tokens: int
    first: float
    last: float
    text: str
    cached: int | None = None


Stream = Callable[[list[dict], int], Result]
Complete = Callable[[list[dict], int], int]


def measure(stream: Stream, complete: Complete | None, work: Workload,
            cpu: Callable[[], float] | None = None) -> dict:
    """Every number of one engine's column (complete=None: no concurrency, one client only).

    `cpu`: the engine's CPU seconds so far (its process tree); the long decode is also counted
    in CPU microseconds per token, which a busy machine disturbs far less than wall time."""
    began = time.perf_counter()
    first_ms = stream(user("Warm up."), 2).ttft * 1000  # load and first use: shown, not mixed in
    first_ms = first_ms if first_ms > 0 else (time.perf_counter() - began) * 1000
    ttfts = [stream(user(QUESTIONS[i % len(QUESTIONS)]), work.ttft_tokens).ttft * 1000
             for i in range(work.ttft_requests)]
    cpu_before = cpu() if cpu else None
    long = stream(user(LONG_ASK), work.decode_tokens)
    cpu_used = cpu() - cpu_before if cpu and cpu_before is not None else None
    out: dict = {
        "first_request_ms": first_ms,
        "decode_cpu_us_per_tok": cpu_used / long.tokens * 1e6 if cpu_used and long.tokens
        else None,
        "ttft_ms_p50": percentile(ttfts, 50), "ttft_ms_p95": percentile(ttfts, 95),
                 "ttft_ms": ttfts,
        "decode_tok_s": decode_rate(long.tokens, long.first, long.last),
                 "decode_tokens": long.tokens,
        "aggregate_tok_s": {},
    }
    started = long.first - long.ttft
    if long.last - long.first < 0.2 * (long.last - started):
        # The stream arrived in one burst (the server wrote it late): no per-token timing to
        # read, so count the whole request (a lower bound that includes the prefill).
        out["decode_tok_s"] = long.tokens / (long.last - started)
        out["decode_note"] = "stream arrived in a burst: tokens / whole request time"
    if work.overhead_tokens:
        out.update(overhead(stream, work, cpu))
    out["aggregate_rounds_tok_s"] = {}
    for clients in work.clients:
        if complete is None and clients > 1:
            continue
        # One untimed round first (each engine's batch shapes, first at this width), then the
        # median of the timed rounds: one round alone moved ±10% between runs.
        rounds = [aggregate(complete or _count(stream), clients, work.agg_tokens, r)
                  for r in range(1 + work.agg_rounds)][1:]
        out["aggregate_rounds_tok_s"][str(clients)] = rounds
        out["aggregate_tok_s"][str(clients)] = percentile(rounds, 50)
    chats = [chat(stream, work, offset=c * 7) for c in range(max(1, work.chats))]
    out["chat_ttft_ms_rounds"] = [[ttft for ttft, _ in turns] for turns in chats]
    out["chat_ttft_ms"] = [statistics.median(by_turn)
                           for by_turn in zip(*out["chat_ttft_ms_rounds"], strict=True)]
    out["chat_cached_tokens"] = [cached for _, cached in chats[0]]
    return out


def chat(stream: Stream, work: Workload, offset: int) -> list[tuple[float, int | None]]:
    """One growing chat from QUESTIONS[offset]: (TTFT ms, cached tokens) per turn."""
    messages: list[dict] = []
    turns = []
    for turn in range(work.turns):
        messages.append({"role": "user", "content": QUESTIONS[(offset + turn) % len(QUESTIONS)]})
        r = stream(messages, work.turn_tokens)
        turns.append((r.ttft * 1000, r.cached))
        messages.append({"role": "assistant", "content": r.text})
    return turns


def overhead(stream: Stream, work: Workload, cpu: Callable[[], float] | None) -> dict:
    """The long decode's wall and CPU microseconds per token over the rounds: the best round
    (other work only ever slows a round, so the least disturbed one is the closest to the
    engine's own cost, as `timeit` advises) and the median."""
    walls, cpus, tokens = [], [], 0
    for _ in range(work.overhead_rounds):
        cpu_before = cpu() if cpu else None
        run = stream(user(LONG_ASK), work.overhead_tokens)
        cpu_used = cpu() - cpu_before if cpu and cpu_before is not None else None
        if run.tokens > 1 and run.last > run.first:
            tokens = run.tokens
            walls.append((run.last - run.first) / (run.tokens - 1) * 1e6)
            if cpu_used:
                cpus.append(cpu_used / run.tokens * 1e6)
    if not walls:
        return {}
    return {"overhead_tokens": tokens, "overhead_wall_us_rounds": walls,
            "overhead_cpu_us_rounds": cpus,
            "overhead_wall_us_per_tok": min(walls),
            "overhead_cpu_us_per_tok": min(cpus) if cpus else None,
            "overhead_wall_us_median": percentile(walls, 50),
            "overhead_cpu_us_median": percentile(cpus, 50) if cpus else None}


def _count(stream: Stream) -> Complete:
    return lambda messages, n: stream(messages, n).tokens


def aggregate(complete: Complete, clients: int, tokens: int, round_: int = 0) -> float:
    """Generated tokens per second of wall time with `clients` requests at once (each round's
    prompts differ: no round is served from an earlier one's prompt cache)."""
    asks = [user(f"{QUESTIONS[i % len(QUESTIONS)]} (client {i}, round {round_})")
            for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        counts = list(pool.map(lambda m: complete(m, tokens), asks))
    return sum(counts) / (time.perf_counter() - start)


# ---- HTTP clients --------------------------------------------------------------------------


def ollama_client(url: str, model: str) -> tuple[Stream, Complete]:
    """/api/chat of the bridge (NDJSON)."""

    def body(messages: list[dict], n: int, stream: bool) -> dict:
        return {"model": model, "messages": messages, "stream": stream,
                "options": {"temperature": 0, "num_predict": n}}

    def stream(messages: list[dict], n: int) -> Result:
        sent = time.perf_counter()
        first = last = 0.0
        parts, final = [], {}
        with requests.post(url + "/api/chat", json=body(messages, n, True), stream=True,
                           timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines(chunk_size=None):
                obj = json.loads(line)
                if "error" in obj:
                    raise RuntimeError(obj["error"])
                text = obj.get("message", {}).get("content", "")
                if text:
                    last = time.perf_counter()
                    first = first or last
                    parts.append(text)
                if obj.get("done"):
                    final = obj
        first = first or time.perf_counter()  # no text at all: the end is the first
        return Result(first - sent, final.get("eval_count", 0), first, last, "".join(parts),
                      final.get("cached_tokens"))

    def complete(messages: list[dict], n: int) -> int:
        r = requests.post(url + "/api/chat", json=body(messages, n, False), timeout=600)
        r.raise_for_status()
        return r.json().get("eval_count", 0)

    return stream, complete


def openai_client(url: str) -> tuple[Stream, Complete]:
    """/v1/chat/completions of mlx_lm.server (SSE)."""

    def body(messages: list[dict], n: int, stream: bool) -> dict:
        out = {"messages": messages, "stream": stream, "max_tokens": n, "temperature": 0}
        if stream:
            out["stream_options"] = {"include_usage": True}
        return out

    def stream(messages: list[dict], n: int) -> Result:
        sent = time.perf_counter()
        first = last = 0.0
        parts, usage = [], {}
        with requests.post(url + "/v1/chat/completions", json=body(messages, n, True), stream=True,
                           timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines(chunk_size=None):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                usage = obj.get("usage") or usage
                for choice in obj.get("choices", []):
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        last = time.perf_counter()
                        first = first or last
                        parts.append(text)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        first = first or time.perf_counter()  # no text at all: the end is the first
        return Result(first - sent, usage.get("completion_tokens", 0), first, last, "".join(parts),
                      cached)

    def complete(messages: list[dict], n: int) -> int:
        r = requests.post(url + "/v1/chat/completions", json=body(messages, n, False), timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    return stream, complete
