"""Prometheus metrics on the bridge's own registry (never prometheus_client's global one).

Names (all prefixed `mlx_bridge_`): `requests_total{model,backend,status}`,
`errors_total{model,backend}`, `prompt_tokens_total` / `eval_tokens_total{model,backend}`,
`prompt_cache_tokens_total{model}`, `request_latency_seconds` and `ttft_seconds`
histograms `{model,backend}`, `fallbacks_total{model,from,to,reason}`, `tracking_dropped_total`,
per API key `key_requests_total{key,status}`, `key_tokens_total{key,kind}` (prompt | eval) and
`key_rejected_total{key,reason}`, and, read from the engine at scrape time, `loaded_models` and
`loaded_model_bytes{model}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bridge.stats.records import RequestRecord
from bridge.wire.names import ModelName

NAMESPACE = "mlx_bridge"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 500  # distinct model labels; any further names are counted as "other"
_REASON_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,39}")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))


class LoadedModelsCollector(Collector):
    """Reads the engine's published snapshot at scrape time (plain data, no MLX)."""

    def __init__(self, snapshot: Callable[[], Sequence[Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = list(self.snapshot())
        yield GaugeMetricFamily(f"{NAMESPACE}_loaded_models", "Models resident in the MLX engine.",
                                value=len(loaded))
        size = GaugeMetricFamily(f"{NAMESPACE}_loaded_model_bytes",
                                 "Weight bytes of each resident MLX model.", labels=["model"])
        for info in loaded:
            size.add_metric([info.name], info.size)
        yield size


class Metrics:
    """The bridge's Prometheus metrics; `record()` and `fallback()` are called by the Tracker."""

    def __init__(self, snapshot: Callable[[], Sequence[Any]] | None = None, *,
                 max_models: int = MAX_MODELS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_models = max_models
        self._models: set[str] = set()
        mb = ["model", "backend"]
        self.requests = self._counter("requests", "Finished requests.", [*mb, "status"])
        self.errors = self._counter("errors", "Requests that ended in an error.", mb)
        self.prompt_tokens = self._counter("prompt_tokens", "Prompt tokens processed.", mb)
        self.eval_tokens = self._counter("eval_tokens", "Tokens generated.", mb)
        self.cache_tokens = self._counter("prompt_cache_tokens",
                                          "Prompt tokens served from the prompt cache.", ["model"])
        self.fallbacks = self._counter("fallbacks", "Requests handed to another backend.",
                                       ["model", "from", "to", "reason"])
        self.dropped = self._counter("tracking_dropped",
                                     "Request records dropped because the writer queue was full.",
                                     [])
        self.key_requests = self._counter("key_requests", "Finished requests per API key.",
                                          ["key", "status"])
        self.key_tokens = self._counter("key_tokens", "Tokens per API key (prompt, eval).",
                                        ["key", "kind"])
        self.key_rejected = self._counter("key_rejected",
                                          "Requests refused per API key and reason.",
                                          ["key", "reason"])
        self.latency = Histogram("request_latency_seconds", "Request latency, start to last byte.",
                                 mb, namespace=NAMESPACE, registry=self.registry,
                                 buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("ttft_seconds", "Time to first token.", mb, namespace=NAMESPACE,
                              registry=self.registry, buckets=TTFT_BUCKETS)
        if snapshot is not None:
            self.registry.register(LoadedModelsCollector(snapshot))

    def _counter(self, name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(name, doc, labels, namespace=NAMESPACE, registry=self.registry)

    def model_label(self, name: str) -> str:
        """The lower-case name; past `max_models` distinct names, "other" (bounds the series
        count)."""
        parsed = ModelName.try_parse(name)  # one series per model, however clients spell it
        label = parsed.key if parsed else "invalid"
        if label not in self._models:
            if len(self._models) >= self.max_models:
                return "other"
            self._models.add(label)
        return label

    def record(self, rec: RequestRecord) -> None:
        """Count one finished request."""
        model, backend = self.model_label(rec.model), rec.backend
        self.requests.labels(model, backend, rec.status).inc()
        if rec.status == "error":
            self.errors.labels(model, backend).inc()
        self.prompt_tokens.labels(model, backend).inc(max(rec.prompt_tokens, 0))
        self.eval_tokens.labels(model, backend).inc(max(rec.eval_tokens, 0))
        if rec.cached_tokens > 0:
            self.cache_tokens.labels(model).inc(rec.cached_tokens)
        if rec.status != "canceled":  # a client hanging up says nothing about the backend's speed
            self.latency.labels(model, backend).observe(rec.latency_ms / 1000)
        if rec.ttft_ms is not None:
            self.ttft.labels(model, backend).observe(rec.ttft_ms / 1000)
        if rec.api_key is not None:  # key names come from the admin API: a bounded set
            self.key_requests.labels(rec.api_key, rec.status).inc()
            self.key_tokens.labels(rec.api_key, "prompt").inc(max(rec.prompt_tokens, 0))
            self.key_tokens.labels(rec.api_key, "eval").inc(max(rec.eval_tokens, 0))

    def fallback(self, model: str, from_backend: str, to_backend: str, reason: str) -> None:
        """Count one fallback; `reason` is a short category (an error class name); free text is
        "other"."""
        label = reason if _REASON_RE.fullmatch(reason) else "other"
        self.fallbacks.labels(self.model_label(model), from_backend, to_backend, label).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
