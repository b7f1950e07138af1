"""Admission, on the engine thread: which waiting job starts now, on which runner (the
Engine's scheduling half; bridge/engine/core.py owns the state it reads and the loop)."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from bridge.engine.batch import BatchRunner
from bridge.engine.embed import EmbedQueue, EmbedTask
from bridge.engine.jobs import Done, Failed, Job
from bridge.engine.models import LoadedModel, ModelCache
from bridge.engine.prepare import Ended, admit, as_bridge_error, batchable
from bridge.engine.prompt_cache import PromptCache
from bridge.engine.single import SingleRunner
from bridge.engine.vision import VisionRunner, admit_vision
from bridge.engine.warmup import batch_slots
from bridge.errors import BridgeError, ClientClosed

if TYPE_CHECKING:
    import threading

log = logging.getLogger("bridge.engine.core")  # one logger for the engine's lines

Runner = BatchRunner | SingleRunner | VisionRunner


class Admission:
    """Starts waiting jobs: in arrival order, a job waiting only behind work of its own model;
    loads, unloads and places each on its model's runner or the embedding queue."""

    # The Engine's state (bridge/engine/core.py), read and changed here on the engine thread;
    # _send, _end, _publish and _unloaded are the Engine's too.
    cache: ModelCache
    prompts: PromptCache
    keep_alive: float
    num_parallel: int
    max_embed_tokens: int
    _lock: threading.Lock
    _waiting: int
    _pending: deque[Job]
    _runners: dict[str, Runner]
    _embeds: EmbedQueue

    def _admit(self) -> None:
        """Start waiting jobs in arrival order; a job waits only behind work of its own model."""
        if not self._pending:  # every step asks: most have nothing waiting
            return
        blocked: set[str] = set()  # models whose earlier job waits: their later jobs wait too
        waiting, self._pending = self._pending, deque()
        try:
            while waiting:
                job = waiting.popleft()
                if not job.cancelled.is_set() and (job.model_path in blocked
                                                   or not self._can_start(job)):
                    blocked.add(job.model_path)
                    self._pending.append(job)
                    continue
                with self._lock:
                    self._waiting -= 1
                if job.cancelled.is_set():
                    self._send(job, Failed(ClientClosed("request canceled")))
                else:
                    self._start(job)
        finally:
            self._pending.extend(waiting)

    def _can_start(self, job: Job) -> bool:
        runner = self._runners.get(job.model_path)
        if job.spec is None and job.keep_alive == 0:
            return True  # unload: at once when idle, else expired (Ollama's expireRunner)
        if job.spec is None:  # load: never under a running model's feet
            return runner is None and all(t.loaded.key != job.model_path for t in self._embeds)
        if job.spec.embed_inputs is not None:
            return True  # computed in slices between decode steps, beside any runner
        if runner is not None:
            return runner.accepts(job)  # same model: batch slot free (else it drains first)
        return len(self._runners) < self.cache.max_loaded  # another model runs beside the others

    def _start(self, job: Job) -> None:
        keep_alive = self.keep_alive if job.keep_alive is None else job.keep_alive
        try:
            if job.spec is None:
                self._load_only(job, keep_alive)
                return
            loaded, load_ns = self.cache.load(job.model_path, job.model_name)
            if job.draft_path:
                loaded.attach_draft(job.draft_path)
        except Exception as exc:
            self._send(job, Failed(as_bridge_error(exc)))
            return
        loaded.touch(job.model_name, keep_alive)
        loaded.active += 1
        try:
            self._place(job, loaded, load_ns)
        except Exception as exc:  # this job only: the other jobs and the loop go on
            if not isinstance(exc, BridgeError):
                log.exception("could not start request_id=%s", job.request_id)
            self._end(Ended(job, loaded, Failed(as_bridge_error(exc))))
        self._publish()

    def _place(self, job: Job, loaded: LoadedModel, load_ns: int) -> None:
        """Hand an admitted job to its model's runner (made if needed) or the embedding queue."""
        assert job.spec is not None
        if job.spec.embed_inputs is not None:
            self._embeds.append(EmbedTask(job, loaded, load_ns, self.max_embed_tokens))
            return
        vision = loaded.processor is not None  # a VLM: mlx-vlm's processor makes the inputs
        entry = (admit_vision if vision else admit)(job, loaded, load_ns)
        if entry.limit <= 0 and entry.sink.finish("length") and entry.sink.final is not None:
            self._end(Ended(job, loaded, entry.sink.final))
            return
        runner = self._runners.get(loaded.key)
        if runner is None:  # an empty runner (add failed) is closed at its next step
            runner = self._runners[loaded.key] = self._new_runner(loaded, job)
        runner.add(entry)

    def _new_runner(self, loaded: LoadedModel, job: Job) -> Runner:
        if loaded.processor is not None:
            return VisionRunner(loaded)
        if loaded.batchable and batchable(job):
            return BatchRunner(loaded, self.prompts, self._capacity(loaded, job))
        return SingleRunner(loaded, self.prompts)

    def _capacity(self, loaded: LoadedModel, job: Job) -> int:
        return batch_slots(loaded, job, self.num_parallel)

    def _load_only(self, job: Job, keep_alive: float) -> None:
        """Empty prompt: load (done_reason "load") or, with keep_alive 0, unload."""
        if keep_alive == 0:
            loaded = self.cache.models.get(job.model_path)
            busy = loaded is not None and loaded.active > 0
            if busy:
                loaded.keep_alive = 0  # _release unloads it when its last running job ends
            del loaded  # so the unload frees it now, before the client hears "unloaded"
            if not busy and not self.cache.unload(job.model_path):
                # Not loaded, yet a request may have readied its tokenizer (a render-only
                # request, one refused before its load): that goes too, as after an unload.
                self._unloaded(job.model_path)
            self._publish()
            self._send(job, Done(done_reason="unload"))
            return
        loaded, load_ns = self.cache.load(job.model_path, job.model_name)
        loaded.touch(job.model_name, keep_alive)
        loaded.release()
        self._publish()
        self._send(job, Done(done_reason="load", load_duration=load_ns))
