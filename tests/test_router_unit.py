"""Fast unit tests of routing: Router plans, the Breaker's cool-down, and no real server process.

The upstream in the dispatch and relay tests is a real local HTTP server (pytest-httpserver).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bridge.routing.router import Breaker, Router, Target

UP = "http://127.0.0.1:9"  # the default upstream (never contacted by a plan)
ROW_UP = "http://10.0.0.5:11434"


class FakeRegistry:
    """The mapping file: name -> backend policy."""

    def __init__(self, policies: dict[str, str]) -> None:
        self.policies = policies

    def lookup(self, name: str) -> SimpleNamespace | None:
        policy = self.policies.get(name)
        return SimpleNamespace(name=name, backend=policy) if policy else None


def row(backend: str, endpoint: str | None = None, mlx_model: str | None = None, **kw: object):
    """An admin backend row as the store returns it."""
    fields = {"backend_type": backend, "endpoint_url": endpoint, "mlx_model": mlx_model,
              "timeout_seconds": None, "api_key_env": None, "max_tokens": None,
              "temperature_default": None}
    return SimpleNamespace(**{**fields, **kw})


def router(rows: dict[str, list] | None = None, upstream: str | None = UP,
           breaker: Breaker | None = None) -> Router:
    registry = FakeRegistry({"m-mlx": "mlx", "m-ollama": "ollama", "m-auto": "auto"})
    return Router(registry, lambda: upstream, (lambda name: (rows or {}).get(name, [])),
                  breaker=breaker)


@pytest.mark.parametrize(("name", "policy", "targets"), [
    ("m-mlx", "mlx", [Target("mlx")]),
    ("m-ollama", "ollama", [Target("ollama", UP)]),
    ("m-auto", "auto", [Target("mlx"), Target("ollama", UP)]),
    ("unmapped:1b", "ollama", [Target("ollama", UP)]),  # a name in neither goes upstream
])
def test_plan_follows_the_mapping_policy(name: str, policy: str, targets: list[Target]) -> None:
    plan = router().plan(name)
    assert (plan.policy, plan.targets, plan.defaults) == (policy, targets, {})


def test_without_an_upstream_auto_is_mlx_only_and_ollama_has_no_target() -> None:
    r = router(upstream=None)
    assert r.plan("m-auto").targets == [Target("mlx")]
    assert r.plan("m-ollama").targets == []


def test_admin_rows_override_the_mapping_in_their_order_with_the_first_rows_defaults() -> None:
    rows = {"m-mlx": [
        row("ollama", ROW_UP, timeout_seconds=5.0, api_key_env="KEY", max_tokens=7,
            temperature_default=0.2),
        row("auto", None, mlx_model="/models/other"),  # no endpoint: the default upstream
    ]}
    plan = router(rows).plan("m-mlx")
    assert plan.policy == "ollama"
    assert plan.targets == [Target("ollama", ROW_UP, timeout=5.0, api_key_env="KEY"),
                            Target("mlx", source="/models/other"), Target("ollama", UP)]
    assert plan.defaults == {"num_predict": 7, "temperature": 0.2}


def test_a_duplicate_target_across_rows_is_tried_once() -> None:
    rows = {"m-auto": [row("auto", ROW_UP), row("ollama", ROW_UP)]}
    assert router(rows).plan("m-auto").targets == [Target("mlx"), Target("ollama", ROW_UP)]


def test_rows_that_cannot_be_read_fall_back_to_the_mapping_file() -> None:
    def broken(name: str) -> list:
        raise RuntimeError("database is locked")

    r = Router(FakeRegistry({"m-auto": "auto"}), lambda: UP, broken)
    assert r.plan("m-auto").targets == [Target("mlx"), Target("ollama", UP)]


def test_an_endpoint_in_its_cool_down_goes_last_but_is_still_planned() -> None:
    breaker = Breaker(cooldown=30)
    rows = {"m-ollama": [row("ollama", ROW_UP), row("ollama", UP)]}
    r = router(rows, breaker=breaker)
    breaker.failure(ROW_UP, "connection refused")
    assert r.plan("m-ollama").targets == [Target("ollama", UP), Target("ollama", ROW_UP)]
    breaker.success(ROW_UP)
    assert r.plan("m-ollama").targets == [Target("ollama", ROW_UP), Target("ollama", UP)]


class Clock:
    """A settable time.time()."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    # the Breaker reads time.time(); patching the module attribute holds wherever Breaker lives
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    return fake


def test_breaker_opens_on_failure_and_half_opens_when_the_cool_down_ends(clock: Clock) -> None:
    b = Breaker(cooldown=30)
    assert not b.is_open(UP)  # never seen: closed
    b.failure(UP, "connection refused")
    assert b.is_open(UP)
    assert b.snapshot()[UP] == {"state": "open", "failures": 1, "retry_in_s": 30.0,
                                "last_error": "connection refused"}
    clock.now += 29.9
    assert b.is_open(UP)
    clock.now += 0.2  # past the cool-down: half-open, the next request may try it
    assert not b.is_open(UP)
    assert b.snapshot()[UP]["state"] == "closed" and b.snapshot()[UP]["failures"] == 1


def test_a_half_open_endpoint_that_fails_again_gets_a_full_new_cool_down(clock: Clock) -> None:
    b = Breaker(cooldown=30)
    b.failure(UP, "connection refused")
    clock.now += 31
    b.failure(UP, "HTTP 503")
    assert b.is_open(UP)
    assert b.snapshot()[UP]["failures"] == 2 and b.snapshot()[UP]["last_error"] == "HTTP 503"
    clock.now += 29
    assert b.is_open(UP)
    clock.now += 2
    assert not b.is_open(UP)


def test_a_success_closes_the_breaker_at_once_and_resets_its_count(clock: Clock) -> None:
    b = Breaker(cooldown=30)
    b.failure(UP, "connection refused")
    b.failure(UP, "connection refused")
    b.success(UP)  # e.g. a request that had nothing else left tried it anyway and it answered
    assert not b.is_open(UP)
    assert b.snapshot()[UP] == {"state": "closed", "failures": 0, "retry_in_s": 0.0,
                                "last_error": "connection refused"}


def test_breaker_endpoints_are_independent_and_shown_without_credentials(clock: Clock) -> None:
    b = Breaker(cooldown=30)
    b.failure("http://me:secret@10.0.0.5:11434", "timed out")
    assert not b.is_open(UP)
    assert list(b.snapshot()) == ["http://***@10.0.0.5:11434"]
