"""Shared pieces of the benchmark: the workload, statistics, process RSS, server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

QUESTIONS = [
    "What is the capital of France?", "Name three colours of the rainbow.", "Why is the sky blue?",
    "Give me a word that rhymes with cat.", "What is 12 times 12?", "Describe a cup of coffee.",
    "What do llamas eat?", "Tell me a fact about the moon.", "How many legs does a spider have?",
    "What is the opposite of hot?", "Name a city in Italy.", "What colour is a banana?",
    "Say something about rain.", "What is a server?", "Why do cats purr?", "What is 2024 minus 24?",
    "Name a famous painter.", "What is the boiling point of water?", "Who wrote Hamlet?",
    "What is an umbrella for?",
]
LONG_ASK = "Write a long story about a little server that spoke the language of llamas."
# Tasks whose answer repeats the prompt (prompt-lookup drafting's case), and LONG_ASK's free text.
REPEAT_ASK = (
    "Repeat the following text exactly, word for word: The little server spoke the language of "
    "llamas. Every morning it woke before the sun, checked its queues, and greeted each request "
    "by name. When the models were heavy it carried them one layer at a time, and when the night "
    "was quiet it counted tokens like stars.")
CODE_ASK = """Fix the typo in this Python function and return the whole corrected function:

def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    totals = []
    running = 0.0
    for i, value in enumerate(values):
        running += value
        if i >= window:
            running -= values[i - window]
        if i >= window - 1:
            totals.append(running / windw)
    return totals
"""
FACTS_ASK = ("Answer each in one sentence: What is the capital of France? Why is the sky blue? "
             "What do llamas eat? Who wrote Hamlet? What is 12 times 12?")
SPEC_PROMPTS = {"story": LONG_ASK, "facts": FACTS_ASK, "repeat": REPEAT_ASK, "code": CODE_ASK}


@dataclass
class Workload:
    """How much each measurement does (quick mode keeps the shared machine free)."""

    ttft_requests: int = 8
    ttft_tokens: int = 4
    decode_tokens: int = 64
    clients: list[int] = field(default_factory=lambda: [1, 4, 8])
    agg_tokens: int = 48
    agg_rounds: int = 3  # timed rounds per client count (the median is reported)
    turns: int = 10
    turn_tokens: int = 24
    # Growing chats, each with other questions; each turn's TTFT is the median over them: one
    # chat's turns moved 156-216 ms with no trend (SmolLM2, the engine's prefill alike), so
    # turn 10 against turn 2 of one chat read 1.04-1.18 for the same server.
    chats: int = 3
    # A long single-stream decode timed for the per-token overhead (the tiny model: compute is
    # negligible, so what is left is the server's own path); 0 = none.
    overhead_tokens: int = 0
    # Rounds of it (the best and the median are reported): one round moves ±100 us a token
    # and more between runs on a shared machine.
    overhead_rounds: int = 5
    # Tokens per round of single-stream decode alternated with raw mlx-lm (bench_ab.py): 64-token
    # rounds (4 s of SmolLM2) read pairs 0.73-1.26 in one run, 160-token ones 0.98-1.12.
    ab_tokens: int = 160

    @classmethod
    def quick(cls) -> Workload:
        return cls()

    @classmethod
    def full(cls) -> Workload:
        return cls(ttft_requests=20, decode_tokens=200, agg_tokens=128, turn_tokens=48,
                   ab_tokens=200)

    def to_dict(self) -> dict:
        return asdict(self)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def decode_rate(tokens: int, first: float, last: float) -> float | None:
    """Tokens per second after the first one."""
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else None


# ---- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def rss_bytes(pids: list[int]) -> int:
    """Resident set size summed over `pids` (VmRSS)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time summed over `pids` (from /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def timed_ms(fn: Callable[[], object], reps: int, unit: float = 1000) -> float:
    """Median wall time of evaluating fn()'s MLX arrays, after one untimed call: ms (unit 1e6:
    us)."""
    import statistics

    import mlx.core as mx

    mx.eval(fn())
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - began)
    return statistics.median(times) * unit


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class PeakRss:
    """Samples the RSS of a process tree in the background; `peak` is the maximum seen."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(tree_pids(self.pid)))
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Server:
    """A server process started by the benchmark."""

    name: str
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_server(name: str, cmd: list[str], env: dict[str, str], port: int,
                 ready: Callable[[str], bool], log_dir: Path, timeout: float = 180) -> Server:
    """Start `cmd` in its own session and wait until `ready(url)`."""
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            if ready(url):
                return Server(name, proc, url, log)
        except requests.RequestException:
            pass
        time.sleep(0.3)
    Server(name, proc, url, log).stop()
    raise RuntimeError(f"{name} did not start in {timeout:.0f} s; see {log}")


def finish_jobs(engine, jobs: list) -> list:
    """Submit the bridge engine's jobs at once and return their Done events (a Failed raises);
    for the in-process benchmark workers (bench_kv, bench_sampler)."""
    from bridge.engine import Done, Failed

    for job in jobs:
        engine.submit(job)
    ends = []
    for job in jobs:
        while not isinstance(event := job.events.get(timeout=600), Done | Failed):
            pass
        if isinstance(event, Failed):
            raise event.error
        ends.append(event)
    return ends
