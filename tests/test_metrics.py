"""Prometheus metrics: counters and histograms from request records, /metrics scraped and parsed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bridge.stats.metrics import Metrics
from bridge.stats.records import RequestRecord


def rec(model: str = "m", backend: str = "mlx", status: str = "ok", **kw) -> RequestRecord:
    values = {"endpoint": None, "prompt_tokens": 10, "eval_tokens": 20, "ttft_ms": 50.0,
              "latency_ms": 400.0, "tokens_per_sec": 50.0, **kw}
    return RequestRecord(model=model, backend=backend, status=status, **values)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from Prometheus text, parsed by the client library."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kw: str) -> frozenset:
    return frozenset(kw.items())


def test_record_counts_requests_errors_tokens_and_latency() -> None:
    m = Metrics()
    m.record(rec("Tiny", prompt_tokens=7, eval_tokens=3, cached_tokens=4))
    m.record(rec("tiny:latest", latency_ms=2000.0, ttft_ms=None))
    m.record(rec("tiny", "ollama", "error", endpoint="http://h:1", eval_tokens=0, error="boom"))
    m.record(rec("tiny", status="canceled", latency_ms=99999.0))
    s = samples(m.exposition().decode())
    mlx = labels(model="tiny:latest", backend="mlx")
    up = labels(model="tiny:latest", backend="ollama")
    assert s[("mlx_bridge_requests_total",
              labels(model="tiny:latest", backend="mlx", status="ok"))] == 2
    assert s[("mlx_bridge_requests_total",
              labels(model="tiny:latest", backend="mlx", status="canceled"))] == 1
    assert s[("mlx_bridge_requests_total",
              labels(model="tiny:latest", backend="ollama", status="error"))] == 1
    assert s[("mlx_bridge_errors_total", up)] == 1
    assert ("mlx_bridge_errors_total", mlx) not in s
    assert s[("mlx_bridge_prompt_tokens_total", mlx)] == 7 + 10 + 10
    assert s[("mlx_bridge_eval_tokens_total", mlx)] == 3 + 20 + 20
    assert s[("mlx_bridge_prompt_cache_tokens_total", labels(model="tiny:latest"))] == 4
    # canceled requests are not latency samples; TTFT only where one was measured
    assert s[("mlx_bridge_request_latency_seconds_count", mlx)] == 2
    assert s[("mlx_bridge_request_latency_seconds_sum", mlx)] == pytest.approx(2.4)
    assert s[("mlx_bridge_request_latency_seconds_bucket",
              labels(model="tiny:latest", backend="mlx", le="0.5"))] == 1
    assert s[("mlx_bridge_ttft_seconds_count", mlx)] == 2
    assert s[("mlx_bridge_ttft_seconds_sum", mlx)] == pytest.approx(0.1)


def test_fallbacks_are_labelled_by_model_from_to_reason() -> None:
    m = Metrics()
    m.fallback("tiny", "mlx", "ollama", "ModelLoadError")
    m.fallback("tiny", "mlx", "ollama", "ModelLoadError")
    m.fallback("tiny", "ollama", "ollama", "connection refused by 10.0.0.1:11434")
    s = samples(m.exposition().decode())
    base = {"model": "tiny:latest", "from": "mlx", "to": "ollama"}
    assert s[("mlx_bridge_fallbacks_total",
              frozenset({**base, "reason": "ModelLoadError"}.items()))] == 2
    other = {"model": "tiny:latest", "from": "ollama", "to": "ollama", "reason": "other"}
    assert s[("mlx_bridge_fallbacks_total", frozenset(other.items()))] == 1


def test_model_labels_are_bounded() -> None:
    m = Metrics(max_models=2)
    for name in ("a", "b", "c", "d", "../bad"):
        m.record(rec(name))
    models = {dict(k[1]).get("model") for k in samples(m.exposition().decode())
              if k[0] == "mlx_bridge_requests_total"}
    assert models == {"a:latest", "b:latest", "other"}


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.record(rec("solo"))
    key = ("mlx_bridge_requests_total", labels(model="solo:latest", backend="mlx", status="ok"))
    assert samples(one.exposition().decode())[key] == 1
    assert key not in samples(two.exposition().decode())
    assert REGISTRY.get_sample_value("mlx_bridge_requests_total",
                                     {"model": "solo:latest", "backend": "mlx",
                                      "status": "ok"}) is None


def test_loaded_models_read_at_scrape_time() -> None:
    loaded: list = []
    m = Metrics(lambda: loaded)
    assert samples(m.exposition().decode())[("mlx_bridge_loaded_models", frozenset())] == 0
    loaded.append(SimpleNamespace(name="tiny:latest", size=1234))
    s = samples(m.exposition().decode())
    assert s[("mlx_bridge_loaded_models", frozenset())] == 1
    assert s[("mlx_bridge_loaded_model_bytes", labels(model="tiny:latest"))] == 1234


def test_metrics_endpoint_serves_prometheus_text(app, client) -> None:
    tracker = app.extensions["bridge"].tracker
    tracker.record(rec("metrics-probe", "ollama", "error", endpoint="http://h:1"))
    tracker.fallback("metrics-probe", "mlx", "ollama", "EngineError")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    s = samples(r.data.decode())
    assert s[("mlx_bridge_requests_total",
              labels(model="metrics-probe:latest", backend="ollama", status="error"))] == 1
    assert s[("mlx_bridge_errors_total",
              labels(model="metrics-probe:latest", backend="ollama"))] == 1
    fb = {"model": "metrics-probe:latest", "from": "mlx", "to": "ollama", "reason": "EngineError"}
    assert s[("mlx_bridge_fallbacks_total", frozenset(fb.items()))] == 1


def test_a_real_generate_is_counted_and_its_model_shown_loaded(app, client) -> None:
    ok = ("mlx_bridge_requests_total", labels(model="tiny:latest", backend="mlx", status="ok"))
    before = samples(client.get("/metrics").data.decode()).get(ok, 0)
    r = client.post("/api/generate", json={"model": "tiny", "prompt": "hello", "stream": False,
                                           "keep_alive": "5m", "options": {"num_predict": 2}})
    assert r.status_code == 200, r.data
    s = samples(client.get("/metrics").data.decode())
    assert s[ok] == before + 1
    assert s[("mlx_bridge_eval_tokens_total", labels(model="tiny:latest", backend="mlx"))] >= 1
    assert s[("mlx_bridge_loaded_models", frozenset())] >= 1
    sizes = {dict(k[1])["model"]: v for k, v in s.items()
             if k[0] == "mlx_bridge_loaded_model_bytes"}
    assert sizes.get("tiny:latest", 0) > 0
    app.extensions["bridge"].tracker.flush()
    compared = client.get("/api/performance/comparison?model=tiny").get_json()["models"]
    assert compared[0]["backends"][0]["backend"] == "mlx" and compared[0]["backends"][0]["ok"] >= 1
