"""The BLAS threads follow other work while the bridge runs (issue 17): a machine that gets busy
after the engine started drops to 1 OpenBLAS thread, and gets every core back once it is idle
again. The rule is fed /proc readings here (fast, exact); then a real engine follows fed
readings while idle and mid-generation, and a real server follows real busy loops."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import time

import pytest
import requests

from bridge.engine import Chunk, Done, Engine, Failed, Job, PromptSpec, blas
from bridge.engine.rowpad import rule_for
from bridge.wire.options import Options

from .conftest import start_server, stop_server, write_mappings
from .helpers import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="OpenBLAS and /proc/stat: Linux only")

HZ = 100  # jiffies per second per CPU, as /proc/stat counts them


class Machine:
    """Fed /proc readings: `cpus` CPUs, `others` of them kept busy by other processes and `own`
    by this process (all, idle, own jiffies, as blas._cpu_times returns), on a fake clock."""

    def __init__(self, cpus: int = 2) -> None:
        self.cpus, self.others, self.own = cpus, 0.0, 0.0
        self.now = 0.0
        self.reads = 0
        self._jiffies = [0.0, 0.0, 0.0]
        self._at = 0.0

    def read(self) -> blas.CpuTimes:
        self.reads += 1
        dt = self.now - self._at
        self._at = self.now
        total = dt * HZ * self.cpus
        idle = max(0.0, total - dt * HZ * (self.others + self.own))
        for i, add in enumerate((total, idle, dt * HZ * self.own)):
            self._jiffies[i] += add
        all_, idle_, own = self._jiffies
        return int(all_), int(idle_), int(own)

    def run(self, follow: blas.ThreadFollower, seconds: float, step: float = 0.25) -> list[int]:
        """Poll like the engine loop does for `seconds`, applying changes; the counts set."""
        changes = []
        end = self.now + seconds
        while self.now < end:
            self.now += step
            n = follow.poll()
            if n is not None:
                follow.set(n)
                changes.append(n)
        return changes


def following(machine: Machine, cores: int = 2, current: int = 2) -> tuple[blas.ThreadFollower,
                                                                          list[int]]:
    calls: list[int] = []
    return blas.ThreadFollower(calls.append, current, cores, read=machine.read,
                               clock=lambda: machine.now), calls


# ---- the rule, fed readings ----------------------------------------------------------------

def test_load_that_starts_later_drops_to_one_thread_and_idle_brings_every_core_back():
    machine = Machine()
    follow, calls = following(machine)
    assert machine.run(follow, 10) == []  # idle: every core, nothing to change
    machine.others = 2.0  # two busy loops start after the bridge did
    assert machine.run(follow, 6) == [1] and calls == [1] and follow.current == 1
    machine.others = 0.0  # they end
    assert machine.run(follow, 6) == [2] and calls == [1, 2]


def test_a_machine_busy_at_start_gets_its_cores_once_it_is_idle():
    machine = Machine()
    follow, calls = following(machine, current=1)
    machine.others = 0.1
    assert machine.run(follow, 8) == [2]


def test_the_bridge_own_decoding_is_not_other_work():
    """Two spinning OpenBLAS threads of this process keep both cores busy: not a reason to drop."""
    machine = Machine()
    machine.own = 2.0
    follow, calls = following(machine)
    assert machine.run(follow, 10) == [] and calls == []


def test_one_busy_process_beside_the_bridge_drops_it_to_one_thread():
    """Beside 2 spinning OpenBLAS threads a single CPU-bound process gets ~2/3 of a core: it
    reads 0.67 busy cores, which must still bring 2 threads down to 1."""
    machine = Machine()
    follow, calls = following(machine)
    machine.others = 0.67
    assert machine.run(follow, 8) == [1] and calls == [1]


def test_a_load_near_the_boundary_does_not_flap():
    """On 2 cores the rule's boundary is half a core: a load swinging 0.35-0.65 changes nothing,
    and even a load swinging across the hysteresis band changes at most every HOLD seconds."""
    machine = Machine()
    follow, _ = following(machine)
    for _ in range(20):
        machine.others = 0.35 if machine.others > 0.5 else 0.65
        assert machine.run(follow, 1.0) == []
    changes = []
    for _ in range(20):
        machine.others = 0.0 if machine.others > 0.5 else 1.5
        changes += machine.run(follow, 0.5)
    assert len(changes) <= 20 * 0.5 / follow.HOLD + 1


def test_polling_never_sleeps_and_reads_proc_at_most_once_an_interval(monkeypatch):
    monkeypatch.setattr(blas.time, "sleep", lambda s: pytest.fail("poll() slept"))
    machine = Machine()
    follow, _ = following(machine)
    reads = machine.reads
    for _ in range(1000):  # a decode loop: 1,000 steps within one second
        machine.now += 0.001
        follow.poll()
    assert machine.reads - reads == 1


def test_a_fixed_count_or_another_blas_is_never_followed(monkeypatch):
    info = blas.enable()
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("MLX_BRIDGE_BLAS_THREADS", "2")
    assert blas.follower(info) is None
    monkeypatch.delenv("MLX_BRIDGE_BLAS_THREADS")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert blas.follower(info) is None
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    for other in (blas.BlasInfo("bundled"), blas.BlasInfo("platform"),
                  blas.BlasInfo("custom", "/opt/mkl/libmkl_rt.so.2", threads=None)):
        assert blas.follower(other) is None


# ---- a real engine, fed readings -------------------------------------------------------------

def openblas_threads(info: blas.BlasInfo) -> int:
    return ctypes.CDLL(info.path).openblas_get_num_threads()


@pytest.fixture
def fast_follow(monkeypatch):
    """A quick follower (readings every 0.1 s) on a fed machine with real time."""
    if blas.physical_cores() < 2:
        pytest.skip("one core: there is nothing to follow")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MLX_BRIDGE_BLAS_THREADS", raising=False)
    monkeypatch.setattr(blas.ThreadFollower, "INTERVAL", 0.1)
    monkeypatch.setattr(blas.ThreadFollower, "TAU", 0.1)
    monkeypatch.setattr(blas.ThreadFollower, "HOLD", 0.3)
    machine = Machine(cpus=blas.physical_cores())
    began = time.monotonic()

    def read() -> blas.CpuTimes:
        machine.now = time.monotonic() - began
        return machine.read()

    monkeypatch.setattr(blas, "_cpu_times", read)
    return machine


@pytest.mark.serial  # it sets OpenBLAS's thread count, and reads it back
@pytest.mark.own_process  # the engines earlier modules left in a worker set it too
def test_a_real_engine_follows_the_load_idle_and_mid_generation(fast_follow, long_model_dir,
                                                                 caplog):
    """OpenBLAS's own count changes while the engine is idle and between decode steps, and the
    generation goes on."""
    cores = blas.physical_cores()
    info = blas.enable()
    if info.name not in ("openblas", "custom") or not info.path:
        pytest.skip(f"no OpenBLAS in this environment ({info.name})")
    caplog.set_level(logging.INFO, logger="bridge.engine.blas")
    # The other count than OpenBLAS has now, so that the idle engine has to change it.
    first, then = (1, cores) if openblas_threads(info) == cores else (cores, 1)
    fast_follow.others = float(cores) if first == 1 else 0.0
    eng = Engine(prompt_cache_bytes=0)
    eng.start()
    job = Job(str(long_model_dir), "tiny",
              spec=PromptSpec(messages=[{"role": "user", "content": "Tell me a story"}]),
              options=Options(temperature=0, num_predict=100_000, num_ctx=1 << 17))
    try:
        assert wait_until(lambda: eng.health()["blas_threads"] == first, 20)  # idle engine
        assert openblas_threads(info) == first
        eng.submit(job)
        chunks = 0

        def tokens_flow(n: int) -> None:
            nonlocal chunks
            end = chunks + n
            while chunks < end:
                event = job.events.get(timeout=30)
                assert isinstance(event, Chunk), event
                chunks += 1

        for count in (then, first):  # mid-generation: idle -> busy -> idle, or the reverse
            tokens_flow(5)
            fast_follow.others = float(cores) if count == 1 else 0.0
            assert wait_until(lambda c=count: eng.health()["blas_threads"] == c, 10)
            assert openblas_threads(info) == count
            if eng.health()["row_block"] is not None:  # the matmuls' row padding follows it
                assert eng.health()["row_block"] == rule_for(count)[0]
            tokens_flow(20)  # still decoding, on the new count
        assert f"blas_threads=1 was={cores}" in caplog.text
        assert f"blas_threads={cores} was=1" in caplog.text
    finally:
        job.cancelled.set()
        eng.stop()
    while not isinstance(job.events.get(timeout=30), Done | Failed):  # it ended
        pass


# ---- a real server, real busy loops ----------------------------------------------------------

HOG = "while True: pass"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("blas-follow")
    mappings = write_mappings(root / "m.yaml", {"tiny": {"mlx": str(tiny_model_dir)}})
    env = {"OPENBLAS_NUM_THREADS": "", "MLX_BRIDGE_BLAS_THREADS": ""}
    proc, url = start_server(["--mappings", str(mappings), "--home", str(root / "home"),
                              "--upstream", "none"], env=env)
    yield url
    stop_server(proc)


def threads_of(url: str) -> int | None:
    return requests.get(url + "/health", timeout=10).json()["engine"]["blas_threads"]


def chat(url: str) -> None:
    body = {"model": "tiny", "stream": False, "options": {"num_predict": 16},
            "messages": [{"role": "user", "content": "hi"}]}
    assert requests.post(url + "/api/chat", json=body, timeout=60).status_code == 200


@pytest.mark.serial  # its busy loops and the idle it waits for are the whole machine's
def test_a_real_server_drops_to_one_thread_under_load_started_later_and_comes_back(served):
    cores = blas.physical_cores()
    if cores < 2 or blas.enable().name not in ("openblas", "custom"):
        pytest.skip("one core or no OpenBLAS: nothing to follow")
    chat(served)
    idle_at_start = wait_until(lambda: threads_of(served) == cores, 8, interval=0.5)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(cores)]
    try:
        chat(served)  # a request while the machine is busy
        assert wait_until(lambda: threads_of(served) == 1, 15, interval=0.5)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    if not idle_at_start:
        pytest.skip(f"the machine was busy before the busy loops started (other work): "
                    f"{cores} threads cannot come back; the fed-load tests cover it")
    assert wait_until(lambda: threads_of(served) == cores, 15, interval=0.5)
    chat(served)
