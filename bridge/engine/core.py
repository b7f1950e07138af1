"""The engine: one thread owns all MLX work; request threads talk to it through queues."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import BridgeError, ClientClosed, EngineError, ServerBusy, ShuttingDown
from .jobs import Done, Failed, Job
from .models import FOREVER, ModelCache
from .sequence import Cancelled, Sequence

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.5  # seconds the idle loop sleeps; short enough to expire models on time


@dataclass
class _Stop:
    """Inbox command: finish up and end the thread."""


@dataclass
class LoadedInfo:
    """A read-only view of a resident model for /api/ps and /health."""

    key: str
    name: str
    size: int
    context_length: int
    expires_at: float
    loaded_at: float
    active: int


class Engine:
    """Owns the MLX thread, the model cache and the job queue."""

    def __init__(self, *, keep_alive: float = 300.0, max_loaded: int = 3, max_queue: int = 512) -> None:
        self.keep_alive = keep_alive
        self.max_queue = max_queue
        self.cache = ModelCache(max_loaded)
        self._inbox: queue.Queue[Job | _Stop] = queue.Queue()
        self._pending: deque[Job] = deque()
        self._active: Sequence | None = None
        self._lock = threading.Lock()
        self._waiting = 0
        self._snapshot: list[LoadedInfo] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.state = "stopped"
        self.device = "unknown"
        self._finished = threading.Event()

    # ---- request-thread side -------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (call after gunicorn forks, never at import)."""
        if self._thread and self._thread.is_alive():
            return
        self._stopping = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self.state = "running"
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued work, unload models and join the thread."""
        if not self._thread:
            return
        self._stopping = True
        self._inbox.put(_Stop())
        self._finished.wait(timeout)
        self.state = "stopped"

    def submit(self, job: Job) -> None:
        """Queue a job; raises ServerBusy when OLLAMA_MAX_QUEUE jobs already wait."""
        if self._stopping or not self.alive:
            raise ShuttingDown("the MLX engine is not running")
        with self._lock:
            if self._waiting >= self.max_queue:
                raise ServerBusy()
            self._waiting += 1
        self._inbox.put(job)

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive() and not self._finished.is_set())

    def snapshot(self) -> list[LoadedInfo]:
        """The resident models, as of the engine's last change."""
        with self._lock:
            return list(self._snapshot)

    def health(self) -> dict[str, Any]:
        with self._lock:
            waiting = self._waiting
        return {"state": self.state if self.alive else "stopped", "queued": waiting,
                "active": self._active is not None}

    # ---- engine-thread side --------------------------------------------------------------

    def _warm_up(self) -> None:
        """Import MLX on this thread so the first request does not pay for it."""
        import mlx.core as mx
        import mlx_lm  # noqa: F401

        self.device = "gpu" if mx.default_device() == mx.gpu else "cpu"

    def _run(self) -> None:
        try:
            self._warm_up()
            while not (self._stopping and self._active is None and not self._pending):
                self._receive(block=self._active is None and not self._pending)
                if self._stopping:
                    self._abort_all(ShuttingDown())
                    break
                self._tick()
        except Exception:  # the loop itself must never die silently
            log.exception("engine loop crashed")
            self.state = "crashed"
        finally:
            self.cache.clear()
            self._publish()
            self._finished.set()
        # Park instead of returning: when a thread that ran MLX exits, MLX's thread-local
        # destructors call into Python, which aborts the process if that races with
        # interpreter shutdown. A parked daemon thread simply vanishes at exit.
        threading.Event().wait()

    def _receive(self, block: bool) -> None:
        timeout = min(_IDLE_WAIT, self.cache.next_expiry()) if block else 0
        try:
            item = self._inbox.get(timeout=timeout) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, _Stop):
                self._stopping = True
            else:
                self._pending.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _tick(self) -> None:
        if self._active is None and self._pending:
            self._begin(self._pending.popleft())
        if self._active is not None:
            self._step()
        busy = {j.model_path for j in self._pending}
        if self._active is not None:
            busy.add(self._active.job.model_path)
        for key in [k for k, m in self.cache.models.items() if m.active == 0 and k not in busy]:
            if self.cache.models[key].expires_at <= time.time():
                self.cache.unload(key, reason="keep_alive")
                self._publish()

    def _begin(self, job: Job) -> None:
        with self._lock:
            self._waiting -= 1
        if job.cancelled.is_set():
            job.events.put(Failed(ClientClosed("request canceled")))
            return
        keep_alive = self.keep_alive if job.keep_alive is None else job.keep_alive
        try:
            if job.spec is None:
                self._load_only(job, keep_alive)
                return
            loaded, load_ns = self.cache.load(job.model_path, job.model_name)
            loaded.touch(job.model_name, keep_alive)
            loaded.active += 1
            self._publish()
            try:
                self._active = Sequence(job, loaded, load_ns)
            except BaseException:
                self._release(loaded)
                raise
        except Exception as exc:
            job.events.put(Failed(_as_bridge_error(exc)))

    def _load_only(self, job: Job, keep_alive: float) -> None:
        """Empty prompt: load (done_reason "load") or, with keep_alive 0, unload."""
        if keep_alive == 0:
            self.cache.unload(job.model_path)
            self._publish()
            job.events.put(Done(done_reason="unload"))
            return
        loaded, load_ns = self.cache.load(job.model_path, job.model_name)
        loaded.touch(job.model_name, keep_alive)
        loaded.release()
        self._publish()
        job.events.put(Done(done_reason="load", load_duration=load_ns))

    def _step(self) -> None:
        seq = self._active
        assert seq is not None
        try:
            if seq.job.cancelled.is_set():
                raise Cancelled()
            finished = seq.step()
        except Cancelled:
            seq.job.events.put(Failed(ClientClosed("request canceled")))
            finished = True
            log.info("generation canceled request_id=%s model=%s", seq.job.request_id, seq.job.model_name)
        except Exception as exc:
            log.exception("generation failed request_id=%s", seq.job.request_id)
            seq.job.events.put(Failed(_as_bridge_error(exc)))
            _reset_random_state()
            finished = True
        if finished:
            seq.close()
            self._active = None
            self._release(seq.loaded)
            if seq.sink.final is not None:  # after release, so keep_alive 0 has taken effect
                seq.job.events.put(seq.sink.final)

    def _release(self, loaded: Any) -> None:
        loaded.release()
        if loaded.keep_alive == 0 and not any(j.model_path == loaded.key for j in self._pending):
            self.cache.unload(loaded.key, reason="keep_alive=0")
        self._publish()

    def _abort_all(self, error: BridgeError) -> None:
        if self._active is not None:
            self._active.job.events.put(Failed(error))
            self._active.close()
            self._active = None
        while self._pending:
            job = self._pending.popleft()
            with self._lock:
                self._waiting -= 1
            job.events.put(Failed(error))

    def _publish(self) -> None:
        """Refresh the snapshot request threads read (they never touch MLX objects)."""
        infos = [
            LoadedInfo(m.key, m.name, m.size, m.context_length,
                       _in_use_expiry(m.keep_alive) if m.active else m.expires_at, m.loaded_at, m.active)
            for m in self.cache.models.values()
        ]
        with self._lock:
            self._snapshot = infos


def _reset_random_state() -> None:
    """A failure inside a compiled sampler can leave MLX's global RNG state unusable."""
    import mlx.core as mx

    mx.random.seed(time.time_ns() & (2**63 - 1))


def _in_use_expiry(keep_alive: float) -> float:
    return FOREVER if keep_alive < 0 else time.time() + keep_alive


def _as_bridge_error(exc: BaseException) -> BridgeError:
    if isinstance(exc, BridgeError):
        return exc
    return EngineError(f"{type(exc).__name__}: {exc}")
