"""What the engine thread does before it serves (start_mlx, then warm_start: a tiny model
loaded, run and unloaded once), and what a model gets when it loads: its KV cache type, the
KV bytes one token of context costs, and a short warm-up generation; and, from those, how
many slots a batch of it can hold. Called by the engine (bridge/engine/core.py), which owns
the thread.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.engine.batch import BatchRunner
from bridge.engine.jobs import Failed, Job, PromptSpec
from bridge.engine.memory import available_memory
from bridge.engine.models import LoadedModel
from bridge.engine.prepare import admit
from bridge.engine.prompt_cache import PromptCache
from bridge.engine.single import SingleRunner
from bridge.errors import ShuttingDown
from bridge.wire.options import Options

if TYPE_CHECKING:
    from bridge.engine.models import ModelCache

log = logging.getLogger(__name__)

WARM_START_NAME = "warm-start"  # the tiny model's name in the engine's log lines


def start_mlx() -> str:
    """Import MLX and mlx-lm on the engine thread, so the first request does not pay; on Apple
    silicon wire the weights' memory as mlx_lm.server does. Returns the device ("gpu"/"cpu")."""
    import mlx.core as mx
    import mlx_lm  # noqa: F401
    from mlx_lm import utils  # noqa: F401  (tokenizer and loader imports)

    if mx.metal.is_available():  # keep the weights wired in memory (no paging out under load)
        from mlx_lm.utils import maybe_set_recommended_wired_limit

        maybe_set_recommended_wired_limit()
    # The BLAS sets up its thread buffers on the first matmul: pay that now, not in a request
    # (and count it in the idle baseline, which an unload returns to).
    a = mx.ones((256, 256))
    mx.eval(a @ a)
    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def warm_start(cache: ModelCache) -> float | None:
    """Build a tiny model, load it, run it and unload it, once, before any request: what a
    process's first load costs once (the imports and library code it touches, MLX's
    file-reading threads, the tokenizer library's thread pool, each kernel's first use) is
    paid at start, as the BLAS buffers are in start_mlx, and not by the first request; the
    idle baseline an unload returns to then holds it. Returns the milliseconds it took, None
    when it failed (logged; the engine serves all the same)."""
    from bridge.testing import build_tiny_model

    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="mlx-bridge-warm-start-") as tmp:
            path = str(build_tiny_model(Path(tmp) / "model"))
            try:
                cache.load(path, WARM_START_NAME)
            finally:
                cache.unload(path, reason="warm start")
    except Exception as exc:  # noqa: BLE001 - a real model's load says what is wrong with it
        log.warning("warm start failed error=%s: %s", type(exc).__name__, exc)
        return None
    elapsed = (time.perf_counter() - began) * 1000
    log.info("engine warm start done warm_ms=%.0f", elapsed)
    return elapsed


def prepare_loaded(loaded: LoadedModel, kv_cache_type: str, warm_up: bool) -> None:
    """Run a 2-token generation on a freshly loaded model, through the path requests take
    (default sampler, batched when the model batches): MLX compiles kernels on first use,
    which no user request should pay. Also measures the KV bytes per token. A failure here
    is logged, never a failed load (the request finds any real problem itself)."""
    if getattr(loaded, "processor", None) is not None:
        return  # a vision model runs on its own runner with mlx-vlm's inputs
    try:
        choose_kv(loaded, kv_cache_type)
        loaded.kv_bytes_per_token = kv_bytes_per_token(loaded.model, loaded.new_cache())
        if warm_up:
            began = time.perf_counter()
            warm_run(loaded)
            log.info("model warmed up model=%s warm_ms=%.0f kv_bytes_per_token=%d",
                     loaded.name, (time.perf_counter() - began) * 1000,
                     loaded.kv_bytes_per_token)
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("warm-up failed model=%s error=%s: %s", loaded.name,
                    type(exc).__name__, exc)


def choose_kv(loaded: LoadedModel, kv_cache_type: str) -> None:
    """Quantized KV caches when OLLAMA_KV_CACHE_TYPE asks and the model's caches allow."""
    if kv_cache_type == "f16":
        return
    from bridge.engine.kvquant import kv_bits, quantizable

    if not quantizable(loaded.model):
        log.warning("KV cache stays unquantized model=%s kv_cache_type=%s reason=%s",
                    loaded.name, kv_cache_type,
                    "its caches are not plain KV caches or heads are not a multiple of 64")
        return
    loaded.kv_bits = kv_bits(kv_cache_type)


def warm_run(loaded: LoadedModel) -> None:
    """Prefill and two decode steps of a 2-token prompt on a runner of its own: one job alone
    (a lone request's path), then two together (the batch's), where the model batches."""
    warm_jobs(loaded, 1)
    if loaded.batchable:
        warm_jobs(loaded, 2)


def warm_jobs(loaded: LoadedModel, count: int) -> None:
    runner: BatchRunner | SingleRunner = (
        BatchRunner(loaded, PromptCache(0), count) if loaded.batchable
        else SingleRunner(loaded, PromptCache(0)))
    try:
        for _ in range(count):
            job = Job(loaded.key, loaded.name, spec=PromptSpec(tokens=[0, 0]),
                      options=Options(num_predict=2), request_id="warm-up")
            runner.add(admit(job, loaded, 0))
        ended = 0
        for _ in range(16):  # prefill, then 2 decode steps; bounded whatever happens
            ended += len(runner.step())
            if ended >= count:
                break
    finally:
        runner.abort(Failed(ShuttingDown()))
        runner.close()


def batch_slots(loaded: LoadedModel, job: Job, num_parallel: int) -> int:
    """OLLAMA_NUM_PARALLEL, lowered when free memory cannot hold that many full contexts
    (a batch's KV caches grow with use; this bounds what a full batch can come to)."""
    per_job = loaded.kv_bytes_per_token * job.options.context(loaded.context_length)
    free = available_memory()
    if not per_job or not free:
        return num_parallel
    fits = max(1, int(free * 0.8) // per_job)
    if fits < num_parallel:
        log.info("num_parallel lowered model=%s slots=%d kv_bytes_per_job=%d free=%d",
                 loaded.name, fits, per_job, free)
    return min(num_parallel, fits)


def kv_bytes_per_token(model: Any, cache: list[Any] | None = None) -> int:
    """KV cache bytes per token of context: one token through a fresh cache (`cache`, or the
    model's own), whose buffers are allocated in steps along the keys' third axis, so
    bytes / allocated length. Quantized caches hold (packed, scales, biases) triples."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = cache if cache is not None else make_prompt_cache(model)
    mx.eval(model(mx.array([[0]]), cache=cache))
    total = 0.0
    for layer in cache:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        parts = list(keys) + list(values) if isinstance(keys, tuple) else [keys, values]
        if any(p is None or not hasattr(p, "shape") or len(p.shape) < 3 for p in parts):
            continue  # an SSM state or an empty cache: no per-token size to read
        total += sum(p.nbytes for p in parts) / parts[0].shape[-2]
    return int(total)
