"""A crashed engine loop: every job hears at once, the dead thread's state is dropped, and a
fresh thread takes over when the RestartPolicy allows (the Engine's crash half;
bridge/engine/core.py owns the state and the threads)."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from bridge.engine.embed import EmbedQueue
from bridge.engine.jobs import Failed, Job
from bridge.engine.models import ModelCache
from bridge.engine.prompt_cache import PromptCache
from bridge.engine.restarts import RestartPolicy
from bridge.errors import BridgeError, EngineError, ShuttingDown

log = logging.getLogger("bridge.engine.core")  # one logger for the engine's lines


class CrashRecovery:
    """What the engine thread does when its loop raises (it then parks; see Engine._run)."""

    # The Engine's state (bridge/engine/core.py); _spawn, _model_cache and _publish are its too.
    cache: ModelCache
    prompts: PromptCache
    prompt_cache_bytes: int
    restart_policy: RestartPolicy
    on_fatal: Callable[[], None] | None
    state: str
    _lock: threading.Lock
    _stopping: bool
    _ready: bool
    _waiting: int
    _finished: threading.Event
    _inbox: queue.Queue[Any]
    _owned: dict[int, Job]
    _runners: dict[str, Any]
    _embeds: EmbedQueue
    _pending: deque[Job]

    def _crashed(self, exc: BaseException) -> None:
        """The loop died: every job hears at once, then a fresh thread takes over (or none can).

        Nothing here may raise: this is the last code the dead thread runs before it parks.
        """
        try:
            log.error("engine loop crashed error=%r", exc, exc_info=exc)
            action, jobs = self._record_crash(exc)
            cause = f"{type(exc).__name__}: {exc}"
            error: BridgeError = ShuttingDown() if action == "stop" else EngineError(
                f"the MLX engine failed ({cause}); "
                + ("it is restarting" if action == "restart" else "it could not be restarted"))
            for job in jobs:
                job.events.put(Failed(error))
            self._discard_state()
        except BaseException:  # noqa: BLE001 - keep going: the thread must still finish and park
            log.exception("engine crash handling failed")
            action = "fatal"
        self._finished.set()
        try:
            if action == "restart":
                self._spawn(self.restart_policy.backoff())
                return
        except BaseException:  # noqa: BLE001 - no thread to restart on: as bad as a crash loop
            log.exception("could not start a fresh engine thread")
            self.state, action = "failed", "fatal"
        if action == "fatal":
            log.critical("MLX engine failed for good restarts=%d", self.restart_policy.restarts)
            try:
                if self.on_fatal is not None:
                    self.on_fatal()
            except BaseException:  # noqa: BLE001
                log.exception("on_fatal failed")

    def _record_crash(self, exc: BaseException) -> tuple[str, list[Job]]:
        """Count the crash, set the state and take every job out (under the submit lock).

        Returns what to do (RestartPolicy.crashed): "degraded" means MLX never came up in this
        process, so MLX models answer 503 and `auto` ones fall back.
        """
        with self._lock:
            action = self.restart_policy.crashed(exc, self._stopping, self._ready)
            self.state = {"stop": "stopped", "restart": "restarting"}.get(action, "failed")
            jobs = self._take_jobs()
            self._waiting = 0
        return action, jobs

    def _take_jobs(self) -> list[Job]:
        """Every job not answered yet: running, embedding, pending, in hand, still in the inbox."""
        jobs, self._owned = list(self._owned.values()), {}
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return jobs
            if isinstance(item, Job):
                jobs.append(item)

    def _discard_state(self) -> None:
        """Drop what the dead loop held and start clean; try to free its memory, never fail."""
        runners, cache, prompts = self._runners, self.cache, self.prompts
        self._runners, self._embeds, self._pending = {}, EmbedQueue(), deque()
        self.prompts = PromptCache(self.prompt_cache_bytes)
        self.cache = self._model_cache()
        self._publish()
        try:  # on this thread, which made them: MLX objects are freed where they were used
            for runner in runners.values():
                runner.close()
            cache.clear()
            prompts.clear()
        except Exception:
            log.exception("could not free the crashed engine's memory")
