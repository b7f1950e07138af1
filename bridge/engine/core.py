"""The engine: one thread owns all MLX work; request threads talk to it through queues."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.engine.admission import Admission, Runner
from bridge.engine.blas import ThreadFollower, follower, settle_mlx
from bridge.engine.embed import EmbedQueue
from bridge.engine.jobs import Done, Embedded, Failed, Job
from bridge.engine.models import LoadedModel, ModelCache, Tokenizers
from bridge.engine.prepare import Ended, as_bridge_error, reset_random_state
from bridge.engine.prompt_cache import DEFAULT_BYTES, PromptCache
from bridge.engine.recovery import CrashRecovery
from bridge.engine.restarts import RESTART_DELAY, RESTART_LIMIT, RestartPolicy
from bridge.engine.snapshot import LoadedInfo, loaded_infos
from bridge.engine.warmup import prepare_loaded, start_mlx, warm_start
from bridge.errors import (
    BridgeError,
    EngineUnavailable,
    ServerBusy,
    ShuttingDown,
)

if TYPE_CHECKING:
    from bridge.engine.rowpad import RowPadding  # it imports MLX: the engine thread loads it

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.5  # seconds the idle loop sleeps; short enough to expire models on time
DEFAULT_MAX_EMBED_TOKENS = 300_000


@dataclass
class _Stop:
    """Inbox command: finish up and end the thread."""


class Engine(Admission, CrashRecovery):
    """Owns the MLX thread, the model cache and the job queue."""

    def __init__(self, *, keep_alive: float = 300.0, max_loaded: int = 3, max_queue: int = 512,
                 num_parallel: int = 4, prompt_cache_bytes: int = DEFAULT_BYTES,
                 max_embed_tokens: int = DEFAULT_MAX_EMBED_TOKENS, max_model_bytes: int = 0,
                 kv_cache_type: str = "f16", warm_up: bool = True, warm_start: bool = False,
                 restart_delay: float = RESTART_DELAY,
                 restart_limit: int = RESTART_LIMIT,
                 on_fatal: Callable[[], None] | None = None) -> None:
        self.keep_alive = keep_alive
        self.max_queue = max_queue
        self.num_parallel = max(1, num_parallel)
        self.max_loaded = max_loaded
        self.max_model_bytes = max_model_bytes
        self.kv_cache_type = kv_cache_type  # OLLAMA_KV_CACHE_TYPE: f16 (model dtype), q8_0, q4_0
        self.warm_up = warm_up  # a short generation at each load (tests of the cold path: off)
        self.warm_start = warm_start  # a tiny model loaded, run and unloaded at start (the server)
        self.warm_start_ms: float | None = None  # how long it took; None: not (yet) done
        self.prompt_cache_bytes = prompt_cache_bytes
        self.max_embed_tokens = max_embed_tokens
        self.restart_policy = RestartPolicy(restart_delay, restart_limit)
        self.on_fatal = on_fatal  # the engine cannot restart: the server ends the process here
        self.prompts = PromptCache(prompt_cache_bytes)
        # Called on the engine thread with a model's key once it is unloaded (request-side
        # tokenizers go with it, so an unload gives all of its memory back).
        self.unload_listeners: list[Callable[[str], None]] = []
        # One tokenizer per model for this thread and the request threads (engine/models.py).
        self.tokenizers = Tokenizers()
        self.cache = self._model_cache()
        self._inbox: queue.Queue[Job | _Stop] = queue.Queue()
        self._pending: deque[Job] = deque()
        self._owned: dict[int, Job] = {}  # taken from the inbox, final event not sent yet
        self._runners: dict[str, Runner] = {}  # one per model, stepped in turn
        self._embeds = EmbedQueue()  # computed a slice per turn, between decoding steps
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0  # jobs in the runners, published for health()
        self.blas = "unknown"
        self.blas_threads: int | None = None
        self.gemv_rows = 0  # matmuls of at most this many rows run on engine/blas_rows.c
        self._blas_follow: ThreadFollower | None = None  # re-decides blas_threads as it runs
        self.row_padding: RowPadding | None = None  # CPU matmuls' rows (engine/rowpad.py)
        self.fast_attention = False  # x86-64 CPU attention's exp (engine/cpu_attention.py)
        self._snapshot: list[LoadedInfo] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake = threading.Event()  # cuts a restart delay short when stop() is called
        self.state = "stopped"
        self.device = "unknown"
        self._ready = False  # this thread warmed up (a first start that cannot is not retried)
        self._mlx_started = False  # MLX was imported in this process (never reset)
        self._warm_started = False  # the warm start ran in this process (never again)
        self._finished = threading.Event()

    def _model_cache(self) -> ModelCache:
        return ModelCache(self.max_loaded, on_unload=self._unloaded,
                          max_bytes=self.max_model_bytes, on_load=self._warm_model,
                          tokenizers=self.tokenizers)

    def _unloaded(self, key: str) -> None:
        self.prompts.drop(key)
        for listener in self.unload_listeners:
            try:
                listener(key)
            except Exception:  # a listener's failure must not stop an unload
                log.exception("unload listener failed model_key=%s", key)

    # ---- request-thread side -------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (call after gunicorn forks, never at import)."""
        if self._thread and self._thread.is_alive() and not self._finished.is_set():
            if not self._stopping:
                return
            # stop() came before MLX started and did not wait: that thread is ending (it never
            # starts MLX now), so wait for it rather than keep a stopped engine.
            self._finished.wait(30)
        self._stopping = False
        self._wake.clear()
        self.state = "running"
        self._spawn(0.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued work, unload models and join the thread."""
        if not self._thread:
            return
        with self._lock:
            self._stopping = True
            started = self._mlx_started
        self._wake.set()
        self._inbox.put(_Stop())
        # Before MLX starts, the thread only samples the CPU and loads the BLAS; it sees
        # _stopping and ends by itself: an early stop (a restart right after a start) need not
        # wait the second that MLX's import would take. Once MLX runs, wait: the process must
        # not exit while the engine thread is inside MLX.
        self._finished.wait(timeout if started else 0)
        self.state = "stopped"

    def submit(self, job: Job) -> None:
        """Queue a job; raises ServerBusy when OLLAMA_MAX_QUEUE jobs already wait."""
        with self._lock:  # a crash drains the inbox under this lock: no job slips in after it
            if self._stopping or self.state == "stopped":
                raise ShuttingDown("the MLX engine is not running")
            if self.state != "running":
                raise EngineUnavailable(self._down_message())
            if self._waiting >= self.max_queue:
                raise ServerBusy()
            self._waiting += 1
            self._inbox.put(job)

    @property
    def alive(self) -> bool:
        return self.state == "running" and bool(self._thread and self._thread.is_alive())

    def snapshot(self) -> list[LoadedInfo]:
        """The resident models, as of the engine's last change."""
        with self._lock:
            return list(self._snapshot)

    def health(self) -> dict[str, Any]:
        with self._lock:
            waiting, running = self._waiting, self._running
        state = self.state if self.alive or self.state != "running" else "stopped"
        return {"state": state, "queued": waiting, "active": running,
                "num_parallel": self.num_parallel,
                "blas": self.blas, "blas_threads": self.blas_threads,
                "row_block": self.row_padding.block if self.row_padding is not None else None,
                "gemv_rows": self.gemv_rows,
                "fast_attention": self.fast_attention,
                "warm_start_ms": self.warm_start_ms,
                "restarts": self.restart_policy.restarts,
                "last_crash": dict(crash) if (crash := self.restart_policy.last_crash) else None}

    def _down_message(self) -> str:
        crash = self.restart_policy.last_crash
        cause = f" ({crash['error']})" if crash else ""
        if self.state == "restarting":
            return f"the MLX engine is restarting after a crash{cause}"
        return f"the MLX engine failed and could not be restarted{cause}"

    # ---- engine-thread side --------------------------------------------------------------

    def _spawn(self, delay: float) -> None:
        """A fresh engine thread; a dead one never runs MLX again (models reload on demand)."""
        self._finished = threading.Event()
        self._ready = False
        self._thread = threading.Thread(target=self._run, args=(delay,), name="mlx-engine",
                                        daemon=True)
        self._thread.start()

    def _warm_up(self) -> bool:
        """Load the fast BLAS (and follow the load from here on), then start MLX; False when
        stop() came first (MLX is then never started)."""
        from bridge.engine.blas import enable

        info = enable()  # before MLX's first matmul binds its BLAS symbols
        if self._blas_follow is None:  # kept across restarts: it knows the count it set last
            self._blas_follow = follower(info)
        follow = self._blas_follow
        self.blas, self.blas_threads = info.name, follow.current if follow else info.threads
        self.gemv_rows = info.gemv_rows
        with self._lock:
            if self._stopping:
                log.info("engine stopped before MLX started")
                return False
            self._mlx_started = True
        self.device = start_mlx()
        from bridge.engine.rowpad import padding_for  # imports MLX: after the BLAS is loaded

        self.row_padding = padding_for(info, self.blas_threads, self.device)
        from bridge.engine.cpu_attention import wanted

        self.fast_attention = wanted(self.device)
        if self.warm_start and not self._warm_started and not self.cache.models:
            self._warm_started = True  # once: a restarted thread finds this process warm
            self.warm_start_ms = warm_start(self.cache)
        return True

    def _run(self, delay: float) -> None:
        try:
            if delay:
                self._wake.wait(delay)
            if not self._stopping and self._warm_up():
                self._ready = True
                with self._lock:
                    if not self._stopping:
                        self.state = "running"
                self._loop()
            self._close_down()
        except BaseException as exc:  # noqa: BLE001 - whatever ends the loop, every job must hear
            self._crashed(exc)
        # Park instead of returning: when a thread that ran MLX exits, MLX's thread-local
        # destructors call into Python, which aborts the process if that races with
        # interpreter shutdown. A parked daemon thread simply vanishes at exit.
        threading.Event().wait()

    def _loop(self) -> None:
        while not self._stopping:
            self._receive(block=not (self._runners or self._pending or self._embeds))
            if self._stopping:
                break
            self._follow_blas()
            self._tick()
            # What the tick's jobs unloaded (keep_alive 0) is freed here, once their runners
            # and entries are gone.
            self.cache.collect()

    def _follow_blas(self) -> None:
        """Between steps: the BLAS threads follow other work's CPU use (blas.ThreadFollower).
        OpenBLAS's count may change only while no BLAS call runs, so the last step's async
        evaluation is waited for first: one step loses its overlap, once per change."""
        follow = self._blas_follow
        n = follow.poll() if follow is not None else None
        if follow is None or n is None:
            return
        settle_mlx()
        follow.set(n)
        self.blas_threads = n
        if self.row_padding is not None:
            self.row_padding.follow(n)

    def _close_down(self) -> None:
        """A normal stop: fail what is left, unload; a cleanup failure is logged, not raised."""
        self._receive(block=False)  # jobs still in the inbox (a stop during the warm-up)
        self._abort_all(ShuttingDown())
        try:
            self.cache.clear()
            self.prompts.clear()
        except Exception:
            log.exception("could not unload the models at stop")
        self._publish()
        self._finished.set()

    def _receive(self, block: bool) -> None:
        if not block and not self._inbox.queue:  # every decoding step asks: mostly nothing
            return
        timeout = min(_IDLE_WAIT, self.cache.next_expiry()) if block else 0
        try:
            item = self._inbox.get(timeout=timeout) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, _Stop):
                self._stopping = True
            else:
                self._owned[item.id] = item
                self._pending.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _tick(self) -> None:
        self._admit()
        for key in list(self._runners):  # models take turns, one step each (no loop variable
            self._step(self._runners[key])  # outlives the step: it would hold an unloaded model)
        self._embed_turn()
        self._expire()

    # ---- scheduling: engine/admission.py; a crashed loop: engine/recovery.py -----------

    def _warm_model(self, loaded: LoadedModel) -> None:
        if self.row_padding is not None and loaded.processor is None:
            loaded.pad_rows(self.row_padding)
        if self.fast_attention and loaded.processor is None:
            loaded.speed_attention()
        prepare_loaded(loaded, self.kv_cache_type, self.warm_up)

    def _step(self, runner: Runner) -> None:
        try:
            ended = runner.step()
        except Exception as exc:  # the model's step failed: its jobs end, the other models go on
            log.exception("generation failed model=%s jobs=%d", runner.loaded.name, len(runner))
            ended = runner.abort(Failed(as_bridge_error(exc)))
            reset_random_state()
        for item in ended:
            self._end(item)
        if len(runner) == 0:
            runner.close()
            self._runners.pop(runner.model_key, None)
            self._publish()

    def _embed_turn(self) -> None:
        finished = self._embeds.turn(decoding=bool(self._runners))
        if finished is not None:
            task, result = finished
            self._end(Ended(task.job, task.loaded, result))

    def _end(self, ended: Ended) -> None:
        """Release the model first, so keep_alive 0 has taken effect when the client hears."""
        self._release(ended.loaded)
        self._send(ended.job, ended.event)

    def _send(self, job: Job, event: Done | Embedded | Failed) -> None:
        """A job's last event: from here on the engine no longer answers for it."""
        self._owned.pop(job.id, None)
        job.events.put(event)

    def _release(self, loaded: LoadedModel) -> None:
        loaded.release()
        if (loaded.keep_alive == 0 and loaded.active == 0
                and not any(j.model_path == loaded.key for j in self._pending)):
            # Only forgotten here: the runner and the job still reference the weights, so the
            # memory goes back in collect() at the end of this loop iteration.
            self.cache.unload(loaded.key, reason="keep_alive=0", free=False)
        self._publish()

    def _expire(self) -> None:
        now = time.time()
        due = [k for k, m in self.cache.models.items() if m.active == 0 and m.expires_at <= now]
        if not due:  # every step asks: mostly nothing is due
            return
        busy = {j.model_path for j in self._pending} | set(self._runners)
        for key in due:
            if key not in busy:
                self.cache.unload(key, reason="keep_alive")
                self._publish()

    def _abort_all(self, error: BridgeError) -> None:
        for runner in list(self._runners.values()):
            for item in runner.abort(Failed(error)):
                self._end(item)
            runner.close()
        self._runners.clear()
        while self._embeds:
            task = self._embeds.popleft()
            self._end(Ended(task.job, task.loaded, Failed(error)))
        while self._pending:
            job = self._pending.popleft()
            with self._lock:
                self._waiting -= 1
            self._send(job, Failed(error))

    def _publish(self) -> None:
        """Refresh the snapshot request threads read (they never touch MLX objects)."""
        running = sum(len(r) for r in self._runners.values()) + len(self._embeds)
        infos = loaded_infos(self.cache, self.prompts, self.device)
        with self._lock:
            self._snapshot, self._running = infos, running

