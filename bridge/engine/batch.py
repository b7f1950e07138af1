"""Continuous batching: mlx-lm's BatchGenerator decodes every admitted job of one model together."""

from __future__ import annotations

import logging
from typing import Any

from bridge.engine.jobs import Failed, Job
from bridge.engine.models import LoadedModel
from bridge.engine.prepare import Ended, Entry, as_bridge_error, batchable, log_cached
from bridge.engine.prompt_cache import PromptCache
from bridge.engine.solo import PREFILL_STEP, Solo
from bridge.errors import ClientClosed

log = logging.getLogger(__name__)


class BatchRunner:
    """Up to `capacity` jobs of one model; each `step()` decodes one token for all of them."""

    def __init__(self, loaded: LoadedModel, prompts: PromptCache, capacity: int) -> None:
        from mlx_lm.generate import BatchGenerator, StopSequences

        self.loaded = loaded
        self.model_key = loaded.key
        self.prompts = prompts
        self.capacity = max(1, capacity)
        self.entries: dict[int, Entry] = {}
        self._ended: list[Ended] = []  # jobs that left during the current step
        self._faults: dict[int, Exception] = {}  # job id -> what failed in that job alone
        self._gen = BatchGenerator(loaded.model, completion_batch_size=self.capacity,
                                   prefill_batch_size=self.capacity, prefill_step_size=PREFILL_STEP)
        self._solo: Solo | None = None
        self._solo_ok = solo_capable(loaded)
        # mlx-lm ends a sequence on EOS itself and hands back its cache; text stops are ours.
        self._stops = StopSequences([[t] for t in loaded.tokenizer.eos_token_ids])

    def __len__(self) -> int:
        return len(self.entries) + (self._solo is not None)

    def accepts(self, job: Job) -> bool:
        return (job.model_path == self.model_key and batchable(job)
                and len(self) < self.capacity)

    def add(self, entry: Entry) -> None:
        """Insert a job (its prefill runs in the next steps, batched with other new prompts)."""
        if self._solo is not None:
            self._rejoin()
        cache, cached = self.prompts.fetch(self.model_key, entry.tokens)
        if cache is None:
            cache = self.loaded.new_cache()
        entry.sink.cached_tokens = cached
        log_cached(entry, cached)
        if not self.entries and self._may_go_solo(entry):  # alone from its prefill on
            self._solo = Solo(entry, cache, entry.tokens)
            return
        (uid,) = self._gen.insert(
            [entry.tokens[cached:]], max_tokens=[entry.limit], caches=[cache],
            all_tokens=[entry.tokens[:cached]], samplers=[entry.sampler],
            logits_processors=[[self._guarded(entry.job.id, p) for p in entry.processors]],
            stop_sequences=[self._stops],
        )
        self.entries[uid] = entry

    def step(self) -> list[Ended]:
        """Drop canceled jobs, then one BatchGenerator step (decode + a prefill chunk).

        A failure that belongs to one job (its logits processor, its detokenizer) ends that job
        only; anything else raises and the engine fails the whole batch.
        """
        self._reap()
        if self._solo is not None:
            self._solo_step(self._solo)
        elif self.entries:
            _, responses = self._gen.next()
            for r in responses:
                entry = self.entries.get(r.uid)
                if entry is None or entry.job.id in self._faults:
                    continue
                try:
                    finished = entry.sink.add(r.token, r.logprobs)
                    if r.finish_reason is not None and not finished:
                        finished = entry.sink.finish(r.finish_reason)
                except Exception as exc:
                    self._faults[entry.job.id] = exc
                    continue
                if finished:
                    self._finish(r.uid, r.prompt_cache, r.all_tokens)
            self._fail_faulted()
            self._maybe_solo()
        ended, self._ended = self._ended, []
        return ended

    # ---- a lone job on generate_step ----------------------------------------------------

    def _maybe_solo(self) -> None:
        """One job left, decoding (its prompt done): take it out of the batch to run alone."""
        if len(self.entries) != 1:
            return
        uid, entry = next(iter(self.entries.items()))
        if not entry.sink.first_token_ns or not self._may_go_solo(entry):
            return  # prefilling in the batch; or per-token work the batch does for it
        cache, tokens = self._gen.remove([uid], return_prompt_caches=True)[uid]
        del self.entries[uid]
        self._solo = Solo(entry, cache, tokens)

    def _may_go_solo(self, entry: Entry) -> bool:
        return self._solo_ok and not entry.processors and not getattr(entry.job, "logprobs", False)

    def _rejoin(self) -> None:
        """Another job arrived: the lone one goes back into the batch where it left off."""
        solo, self._solo = self._solo, None
        assert solo is not None
        held = solo.close()
        from mlx_lm.models.cache import trim_prompt_cache

        entry = solo.entry
        if held == len(solo.fed):  # as at a prompt's end: the last token runs again
            trim_prompt_cache(solo.cache, 1)
            held -= 1
        left = max(1, entry.limit - len(entry.sink.tokens))
        (uid,) = self._gen.insert([solo.fed[held:]], max_tokens=[left], caches=[solo.cache],
                                  all_tokens=[solo.fed[:held]], samplers=[entry.sampler],
                                  logits_processors=[[]], stop_sequences=[self._stops])
        self.entries[uid] = entry

    def _solo_step(self, solo: Solo) -> None:
        entry = solo.entry
        try:
            finished = solo.next()
        except Exception as exc:  # this job's own failure (detokenizer ...): it alone ends
            self._solo = None
            solo.close()
            log.error("request failed alone request_id=%s model=%s error=%r", entry.job.request_id,
                      entry.job.model_name, exc, exc_info=exc)
            self._ended.append(Ended(entry.job, entry.loaded, Failed(as_bridge_error(exc))))
            return
        if finished:
            self._solo = None
            held = solo.close()
            assert entry.sink.final is not None
            self._ended.append(Ended(entry.job, entry.loaded, entry.sink.final))
            self.prompts.insert(self.model_key, solo.fed[:held], solo.cache)

    def _guarded(self, job_id: int, processor: Any) -> Any:
        """Run inside mlx-lm's batched step: a raising processor marks its job, not the batch."""

        def run(tokens: Any, logits: Any) -> Any:
            if job_id in self._faults:
                return logits
            try:
                return processor(tokens, logits)
            except Exception as exc:
                self._faults[job_id] = exc
                return logits

        return run

    def _fail_faulted(self) -> None:
        """Take the jobs whose own code failed out of the batch, each with its error."""
        bad = [uid for uid, e in self.entries.items() if e.job.id in self._faults]
        if not bad:
            return
        self._gen.remove(bad)
        for uid in bad:
            entry = self.entries.pop(uid)
            exc = self._faults.pop(entry.job.id)
            log.error("request failed alone request_id=%s model=%s error=%r", entry.job.request_id,
                      entry.job.model_name, exc, exc_info=exc)
            self._ended.append(Ended(entry.job, entry.loaded, Failed(as_bridge_error(exc))))

    def _reap(self) -> None:
        """Canceled jobs leave before the step: their slot is free for the next job."""
        solo = self._solo
        if solo is not None and solo.entry.job.cancelled.is_set():
            self._solo = None
            solo.close()
            log.info("generation canceled request_id=%s model=%s", solo.entry.job.request_id,
                     solo.entry.job.model_name)
            failed = Failed(ClientClosed("request canceled"))
            self._ended.append(Ended(solo.entry.job, solo.entry.loaded, failed))
        gone = [uid for uid, e in self.entries.items() if e.job.cancelled.is_set()]
        if gone:
            self._gen.remove(gone)  # their KV caches go with them: nothing is kept
        for uid in gone:
            entry = self.entries.pop(uid)
            log.info("generation canceled request_id=%s model=%s", entry.job.request_id,
                     entry.job.model_name)
            failed = Failed(ClientClosed("request canceled"))
            self._ended.append(Ended(entry.job, entry.loaded, failed))

    def _finish(self, uid: int, cache: Any, tokens: list[int] | None) -> None:
        """A job ended normally: keep its KV cache for the next turn."""
        entry = self.entries.pop(uid)
        assert entry.sink.final is not None
        self._ended.append(Ended(entry.job, entry.loaded, entry.sink.final))
        if cache is None:  # our sink stopped it (stop string, limit): take it out of the batch
            cache, tokens = self._gen.remove([uid], return_prompt_caches=True)[uid]
        self.prompts.insert(self.model_key, list(tokens or []), cache)

    def abort(self, event: Failed) -> list[Ended]:
        """End every job with `event` (engine stopping, or the batch step failed)."""
        ended = self._ended + [Ended(e.job, e.loaded, event) for e in self.entries.values()]
        if self._solo is not None:
            ended.append(Ended(self._solo.entry.job, self._solo.entry.loaded, event))
            self._solo.close()
            self._solo = None
        self._ended, self._faults = [], {}
        if self.entries:
            self._gen.remove(list(self.entries))
        self.entries.clear()
        return ended

    def close(self) -> None:
        """Release the generator (call when empty; abort() first otherwise)."""
        if self._solo is not None:
            self._solo.close()
            self._solo = None
        self._gen.close()


def solo_capable(loaded: LoadedModel) -> bool:
    """A lone job may leave the batch when its cache can be trimmed by a token both ways:
    plain (or quantized) KV caches, on a model without a vision processor."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    if getattr(loaded, "processor", None) is not None:
        return False
    return all(type(c) is KVCache for c in make_prompt_cache(loaded.model))
