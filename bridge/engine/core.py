"""The engine: one thread owns all MLX work; request threads talk to it through queues."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import BridgeError, ClientClosed, ServerBusy, ShuttingDown
from .batch import BatchRunner
from .embed import embed
from .jobs import Done, Embedded, Failed, Job
from .models import FOREVER, LoadedModel, ModelCache
from .prepare import Ended, admit, as_bridge_error, batchable, reset_random_state
from .prompt_cache import DEFAULT_BYTES, PromptCache
from .single import SingleRunner

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.5  # seconds the idle loop sleeps; short enough to expire models on time

Runner = BatchRunner | SingleRunner


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

    def __init__(self, *, keep_alive: float = 300.0, max_loaded: int = 3, max_queue: int = 512,
                 num_parallel: int = 4, prompt_cache_bytes: int = DEFAULT_BYTES) -> None:
        self.keep_alive = keep_alive
        self.max_queue = max_queue
        self.num_parallel = max(1, num_parallel)
        self.prompts = PromptCache(prompt_cache_bytes)
        self.cache = ModelCache(max_loaded, on_unload=self.prompts.drop)
        self._inbox: queue.Queue[Job | _Stop] = queue.Queue()
        self._pending: deque[Job] = deque()
        self._runner: Runner | None = None
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0  # jobs in the runner, published for health()
        self.blas = "unknown"
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
            waiting, running = self._waiting, self._running
        return {"state": self.state if self.alive else "stopped", "queued": waiting,
                "active": running, "num_parallel": self.num_parallel, "blas": self.blas}

    # ---- engine-thread side --------------------------------------------------------------

    def _warm_up(self) -> None:
        """Load the fast BLAS, then import MLX on this thread so the first request does not pay."""
        from ..blas import enable

        self.blas = enable().name  # before MLX's first matmul binds its BLAS symbols
        import mlx.core as mx
        import mlx_lm  # noqa: F401
        from mlx_lm import utils  # noqa: F401  (tokenizer and loader imports)

        self.device = "gpu" if mx.default_device() == mx.gpu else "cpu"
        # The BLAS sets up its thread buffers on the first matmul: pay that now, not in a request
        # (and count it in the idle baseline, which an unload returns to).
        a = mx.ones((256, 256))
        mx.eval(a @ a)

    def _run(self) -> None:
        try:
            self._warm_up()
            while not (self._stopping and self._runner is None and not self._pending):
                self._receive(block=self._runner is None and not self._pending)
                if self._stopping:
                    self._abort_all(ShuttingDown())
                    break
                self._tick()
        except Exception:  # the loop itself must never die silently
            log.exception("engine loop crashed")
            self.state = "crashed"
        finally:
            self.cache.clear()
            self.prompts.clear()
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
        self._admit()
        if self._runner is not None:
            self._step(self._runner)
        self._expire()
        self.cache.collect()  # here the finished runner and its jobs no longer hold the weights

    def _admit(self) -> None:
        """Start waiting jobs in order while the runner takes them (FIFO: no overtaking)."""
        while self._pending:
            job = self._pending[0]
            if not job.cancelled.is_set() and not self._can_start(job):
                return  # the runner drains first (other model, full batch, or a single job)
            self._pending.popleft()
            with self._lock:
                self._waiting -= 1
            if job.cancelled.is_set():
                job.events.put(Failed(ClientClosed("request canceled")))
            else:
                self._start(job)

    def _can_start(self, job: Job) -> bool:
        runner = self._runner
        if runner is None:
            return True
        if job.spec is None:  # load/unload: never under a running model's feet
            return job.model_path != runner.model_key
        if job.spec.embed_inputs is not None:
            return True  # runs to the end within this tick, between two generation steps
        return runner.accepts(job)

    def _start(self, job: Job) -> None:
        keep_alive = self.keep_alive if job.keep_alive is None else job.keep_alive
        try:
            if job.spec is None:
                self._load_only(job, keep_alive)
                return
            loaded, load_ns = self.cache.load(job.model_path, job.model_name)
        except Exception as exc:
            job.events.put(Failed(as_bridge_error(exc)))
            return
        loaded.touch(job.model_name, keep_alive)
        loaded.active += 1
        if job.spec.embed_inputs is not None:
            self._embed(job, loaded, load_ns)
            return
        try:
            entry = admit(job, loaded, load_ns)
        except Exception as exc:
            self._end(Ended(job, loaded, Failed(as_bridge_error(exc))))
            return
        if entry.limit <= 0 and entry.sink.finish("length") and entry.sink.final is not None:
            self._end(Ended(job, loaded, entry.sink.final))
            return
        try:
            if self._runner is None:
                self._runner = self._new_runner(loaded, job)
            self._runner.add(entry)
        except Exception as exc:  # an empty runner is closed at the next step
            log.exception("could not start request_id=%s", job.request_id)
            self._end(Ended(job, loaded, Failed(as_bridge_error(exc))))
            return
        self._publish()

    def _embed(self, job: Job, loaded: LoadedModel, load_ns: int) -> None:
        """A non-generating job: one forward pass per input, answered with one Embedded event."""
        try:
            event: Embedded | Failed = embed(job, loaded, load_ns)
        except Exception as exc:
            if not isinstance(exc, BridgeError):
                log.exception("embedding failed request_id=%s model=%s", job.request_id, job.model_name)
            event = Failed(as_bridge_error(exc))
        self._end(Ended(job, loaded, event))

    def _new_runner(self, loaded: LoadedModel, job: Job) -> Runner:
        if loaded.batchable and batchable(job):
            return BatchRunner(loaded, self.prompts, self.num_parallel)
        return SingleRunner(loaded, self.prompts)

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

    def _step(self, runner: Runner) -> None:
        try:
            ended = runner.step()
        except Exception as exc:
            log.exception("generation failed model=%s jobs=%d", runner.loaded.name, len(runner))
            ended = runner.abort(Failed(as_bridge_error(exc)))
            reset_random_state()
        for item in ended:
            self._end(item)
        if len(runner) == 0:
            runner.close()
            self._runner = None
            self._publish()

    def _end(self, ended: Ended) -> None:
        """Release the model first, so keep_alive 0 has taken effect when the client hears."""
        self._release(ended.loaded)
        ended.job.events.put(ended.event)

    def _release(self, loaded: LoadedModel) -> None:
        loaded.release()
        if (loaded.keep_alive == 0 and loaded.active == 0
                and not any(j.model_path == loaded.key for j in self._pending)):
            # Only forgotten here: the runner and the job still reference the weights, so the
            # memory goes back in collect() at the end of this loop iteration.
            self.cache.unload(loaded.key, reason="keep_alive=0", free=False)
        self._publish()

    def _expire(self) -> None:
        busy = {j.model_path for j in self._pending}
        if self._runner is not None:
            busy.add(self._runner.model_key)
        for key in [k for k, m in self.cache.models.items() if m.active == 0 and k not in busy]:
            if self.cache.models[key].expires_at <= time.time():
                self.cache.unload(key, reason="keep_alive")
                self._publish()

    def _abort_all(self, error: BridgeError) -> None:
        if self._runner is not None:
            for item in self._runner.abort(Failed(error)):
                self._end(item)
            self._runner.close()
            self._runner = None
        while self._pending:
            job = self._pending.popleft()
            with self._lock:
                self._waiting -= 1
            job.events.put(Failed(error))

    def _publish(self) -> None:
        """Refresh the snapshot request threads read (they never touch MLX objects)."""
        running = len(self._runner) if self._runner is not None else 0
        infos = [
            LoadedInfo(m.key, m.name, m.size, m.context_length,
                       _in_use_expiry(m.keep_alive) if m.active else m.expires_at, m.loaded_at, m.active)
            for m in self.cache.models.values()
        ]
        with self._lock:
            self._snapshot, self._running = infos, running



def _in_use_expiry(keep_alive: float) -> float:
    return FOREVER if keep_alive < 0 else time.time() + keep_alive
