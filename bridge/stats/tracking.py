"""Request tracking: metrics now, the database later, on a writer thread so a request never waits.

Every request outcome is turned into a RequestRecord here, and only here: `LocalOutcome` for a
generation on MLX, `record_forwarded` for a relayed upstream answer, `record_failed_attempt` for
a target that failed before its first byte and was passed over for the next one.

`record()` updates the Prometheus counters in the caller's thread (cheap) and queues the record;
one writer thread stores queued records in batches (one transaction each). The queue is bounded:
when the database falls behind, records are dropped and counted (`tracking_dropped_total`), never
blocking a request. `start()` is called by `Bridge.start()` after gunicorn forks.

A database outage (StoreUnavailable) keeps the batch in memory, bounded (`max_pending`; past it
the oldest are dropped and counted), and the writer tries again every `RETRY_SECONDS` until the
database answers; every record carries a unique `rid`, so a batch whose commit was lost with the
connection is never stored twice. Each record is stamped with this bridge's `bridge_id`, and a
record made with an API key is reported to `on_usage` (the per-key token limits).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.errors import StoreUnavailable
from bridge.stats.metrics import Metrics
from bridge.stats.records import RequestRecord
from bridge.stats.store import Store

if TYPE_CHECKING:
    from bridge.engine import Done
    from bridge.http.web import RequestContext

log = logging.getLogger(__name__)

BATCH = 256
MAX_PENDING = 50_000  # records kept in memory while the database is down
RETRY_SECONDS = 1.0  # while records are pending: how often the writer tries the database again
KEEP_RECORDS = 200_000  # the request log keeps this many newest records (a few tens of MB)
_PRUNE_EVERY = 1000  # records written between prunes


class _Flush:
    """Queue marker: set once everything queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class Tracker:
    """Records every request in the store (background writer) and in the metrics."""

    def __init__(self, store: Store, metrics: Metrics, *, max_queue: int = 10_000,
                 keep_records: int = KEEP_RECORDS, bridge_id: str | None = None,
                 max_pending: int = MAX_PENDING,
                 on_usage: Callable[[RequestRecord], None] | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.keep_records = keep_records
        self.bridge_id = bridge_id
        self.on_usage = on_usage
        self.max_pending = max_pending
        self._queue: queue.Queue[object] = queue.Queue(max_queue)
        self._pending: deque[RequestRecord] = deque()  # written when the database returns
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one drainer at a time (writer thread or a flush())
        self._since_prune = _PRUNE_EVERY  # prune with the first batch: the file may hold more
        self._last_drop_log = 0.0

    # ---- called from request threads --------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Count a finished request in the metrics and queue it for the store."""
        if rec.bridge_id is None:
            rec.bridge_id = self.bridge_id
        self.metrics.record(rec)
        if rec.api_key is not None and self.on_usage is not None:
            self.on_usage(rec)
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self.metrics.dropped.inc()
            now = time.monotonic()
            if now - self._last_drop_log > 10:  # one line per 10 s, not one per request
                self._last_drop_log = now
                log.warning("tracking queue full, dropping request records model=%s", rec.model)

    def fallback(self, model: str, from_backend: str, to_backend: str, reason: str) -> None:
        """Count a fallback (reason as a metric label when it is a short category) and log it."""
        self.metrics.fallback(model, from_backend, to_backend, reason)
        log.warning("fallback model=%s from=%s to=%s reason=%r", model, from_backend, to_backend,
                    reason)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything recorded so far is stored; True when it was in time."""
        if not self.running:
            self._drain()  # no writer thread (tests, or before start()): write here
            return True
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def start(self) -> None:
        """Start the writer thread (after any fork; idempotent)."""
        if self.running:
            return
        self._thread = threading.Thread(target=self._run, name="tracking-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued and end the writer thread."""
        if not self.running:
            self._drain()
            return
        self._queue.put(_STOP)
        if self._thread:
            self._thread.join(timeout)
        self._thread = None

    # ---- writer side ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records held in memory until the database answers again."""
        return len(self._pending)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=RETRY_SECONDS if self._pending else None)
            except queue.Empty:
                with self._lock:
                    self._store([])  # nothing new: try the pending records again
                continue
            stop = self._write_batch(item)
        self._drain()

    def _drain(self) -> None:
        """Write everything queued now, in the calling thread."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            self._write_batch(item)

    def _write_batch(self, first: object) -> bool:
        """Write `first` plus whatever else is queued (up to BATCH) in one transaction.

        Returns True when the stop marker was seen.
        """
        batch: list[RequestRecord] = []
        markers: list[_Flush] = []
        item, stop = first, False
        while True:
            if isinstance(item, RequestRecord):
                batch.append(item)
            elif isinstance(item, _Flush):
                markers.append(item)
                break  # write now, so the marker means "everything before me is stored"
            else:
                stop = item is _STOP
                break
            if len(batch) >= BATCH:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            self._store(batch)
        for m in markers:
            m.done.set()
        return stop

    def _store(self, batch: list[RequestRecord]) -> None:
        """Write what is pending, then `batch`; on an outage keep both for the next try."""
        if self._pending and not self._write_pending():
            self._hold(batch)
            return
        if not batch:
            return
        try:
            self.store.record_many(batch)
        except StoreUnavailable as exc:  # the request succeeded; its record waits in memory
            if not self._pending:  # one line per outage, not one per batch
                log.error("request records held until the database returns count=%d "
                          "error=%r", len(batch), exc.message)
            self._hold(batch)
            return
        except Exception:  # a bad record must not end the writer thread
            log.exception("request records not stored count=%d", len(batch))
            return
        self._prune(len(batch))

    def _write_pending(self) -> bool:
        """Write the held records, oldest first, a batch per transaction; False while the
        database is still down."""
        while self._pending:
            chunk = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            try:
                self.store.record_many(chunk)
            except StoreUnavailable:
                return False
            except Exception:  # a record the database refuses: lost, not retried forever
                log.exception("request records not stored count=%d", len(chunk))
            for _ in chunk:
                self._pending.popleft()
            self._prune(len(chunk))
        log.info("held request records written, database reachable again")
        return True

    def _hold(self, batch: list[RequestRecord]) -> None:
        self._pending.extend(batch)
        over = len(self._pending) - self.max_pending
        if over > 0:  # bounded: the oldest go first, counted like a full queue
            for _ in range(over):
                self._pending.popleft()
            self.metrics.dropped.inc(over)

    def _prune(self, written: int) -> None:
        self._since_prune += written
        if self._since_prune < _PRUNE_EVERY:
            return
        self._since_prune = 0  # the next prune after another _PRUNE_EVERY records
        try:
            self.store.prune(self.keep_records)
        except Exception as exc:  # pruning is housekeeping: the next one catches up
            log.error("request log not pruned error=%r", getattr(exc, "message", exc))


# ---- outcomes -> records (request threads, or a relay's generator after the view returned) ----

CANCELED_ERRORS = ("request canceled", "client disconnected")


def status_of(ok: bool, error: str | None) -> str:
    """A client hanging up is not the backend's failure: "canceled", not "error"."""
    if ok:
        return "ok"
    return "canceled" if error in CANCELED_ERRORS else "error"


def _record(tracker: Tracker, rec: RequestRecord) -> None:
    try:
        tracker.record(rec)
    except Exception:  # tracking must never break serving
        log.exception("could not record request model=%s", rec.model)


class LocalOutcome:
    """Records a local (MLX) generation's result once it ends (ttft: up to its first event)."""

    def __init__(self, tracker: Tracker, ctx: RequestContext) -> None:
        self.tracker, self.ctx = tracker, ctx
        self.first_ns = time.perf_counter_ns()

    def finish(self, done: Done | None, error: str | None) -> None:
        eval_s = done.eval_duration / 1e9 if done and done.eval_duration else 0
        started = self.ctx.started_ns
        _record(self.tracker, RequestRecord(
            model=self.ctx.model, backend="mlx", endpoint=None,
            status=status_of(done is not None, error), error=error,
            prompt_tokens=done.prompt_eval_count if done else 0,
            eval_tokens=done.eval_count if done else 0,
            ttft_ms=(self.first_ns - started) / 1e6,
            latency_ms=(time.perf_counter_ns() - started) / 1e6,
            tokens_per_sec=done.eval_count / eval_s if done and eval_s else None,
            cached_tokens=done.cached_tokens if done else 0, fallback_from=self.ctx.fallback_from,
            api_key=self.ctx.api_key))


def record_forwarded(tracker: Tracker, ctx: RequestContext, backend: str, endpoint: str | None,
                     status: int, final: dict[str, Any] | None, error: str | None,
                     opened_ns: int, first_ns: int | None) -> None:
    """A relayed upstream answer, from its final NDJSON object (token counts and durations);
    timed from `opened_ns`, when the upstream was asked (a failed attempt before is not its)."""
    final = final or {}
    eval_count = int(final.get("eval_count") or 0)
    eval_ns = int(final.get("eval_duration") or 0)
    _record(tracker, RequestRecord(
        model=ctx.model, backend=backend, endpoint=endpoint,
        status=status_of(status < 400 and error is None, error),
        error=error or (None if status < 400 else f"HTTP {status}"),
        prompt_tokens=int(final.get("prompt_eval_count") or 0), eval_tokens=eval_count,
        ttft_ms=(first_ns - opened_ns) / 1e6 if first_ns is not None else None,
        latency_ms=(time.perf_counter_ns() - opened_ns) / 1e6,
        tokens_per_sec=eval_count / (eval_ns / 1e9) if eval_ns else None,
        fallback_from=ctx.fallback_from, api_key=ctx.api_key))


def record_failed_attempt(tracker: Tracker, ctx: RequestContext, backend: str,
                          endpoint: str | None, reason: str, message: str) -> None:
    """A target that failed before its first byte (the request went on to the next one)."""
    _record(tracker, RequestRecord(
        model=ctx.model, backend=backend, endpoint=endpoint, status="error",
        error=f"{reason}: {message}", prompt_tokens=0, eval_tokens=0, ttft_ms=None,
        latency_ms=(time.perf_counter_ns() - ctx.started_ns) / 1e6, tokens_per_sec=None,
        fallback_from=ctx.fallback_from, api_key=ctx.api_key))
