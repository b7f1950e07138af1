"""Who serves a model: the per-model backend policy (mlx | ollama | auto) as an ordered plan.

Admin rows (SQLite, enabled, by priority) override the mapping file; a name in neither goes to the
default upstream. Upstream endpoints that fail are skipped for a cool-down (circuit breaker).

A target is the local MLX engine or a remote endpoint speaking a protocol: `ollama` (Ollama,
another bridge) or `openai` (mlx_lm.server, vLLM, LM Studio, exo...). An `mlx` row or mapping entry
with an `endpoint_url` is MLX on another server, which speaks OpenAI unless it says otherwise.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.routing.registry import Registry
from bridge.routing.upstream import redact_url

log = logging.getLogger(__name__)

COOLDOWN_SECONDS = 30.0


@dataclass(frozen=True)
class Target:
    """One way to serve a request: the local MLX engine or one remote endpoint."""

    backend: str  # "mlx" | "ollama": what tracking and the comparison group it under
    endpoint: str | None = None  # None: the local engine
    source: str | None = None  # an admin row's mlx_model overriding the mapping
    timeout: float | None = None
    api_key_env: str | None = None  # the environment variable holding this endpoint's key
    protocol: str = "ollama"  # a remote endpoint's: "ollama" | "openai"
    remote_model: str | None = None  # the name the remote knows; None: the request's own

    @property
    def local(self) -> bool:
        return self.endpoint is None

    @property
    def who(self) -> str:
        """How messages name the endpoint: `upstream Ollama` or `OpenAI-protocol endpoint`."""
        return "upstream Ollama" if self.protocol == "ollama" else "OpenAI-protocol endpoint"

    @property
    def label(self) -> str:
        if self.local:
            return self.backend
        suffix = "" if self.protocol == "ollama" else f"({self.protocol})"
        return f"{self.backend}@{redact_url(self.endpoint)}{suffix}"


@dataclass
class Plan:
    """The ordered targets for one model and the option defaults its admin row sets."""

    name: str
    policy: str
    targets: list[Target]
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass
class EndpointState:
    failures: int = 0
    open_until: float = 0.0
    last_error: str = ""
    last_ok: float = 0.0


class Breaker:
    """Per-endpoint circuit breaker: a failed endpoint is skipped until its cool-down ends."""

    def __init__(self, cooldown: float = COOLDOWN_SECONDS) -> None:
        self.cooldown = cooldown
        self._states: dict[str, EndpointState] = {}
        self._lock = threading.Lock()

    def is_open(self, endpoint: str) -> bool:
        with self._lock:
            state = self._states.get(endpoint)
            return bool(state and state.open_until > time.time())

    def failure(self, endpoint: str, error: str) -> None:
        with self._lock:
            state = self._states.setdefault(endpoint, EndpointState())
            state.failures += 1
            state.open_until = time.time() + self.cooldown
            state.last_error = error
        log.warning("endpoint marked down endpoint=%s cooldown_s=%.0f error=%r",
                    redact_url(endpoint), self.cooldown, error)

    def success(self, endpoint: str) -> None:
        with self._lock:
            state = self._states.setdefault(endpoint, EndpointState())
            state.failures, state.open_until, state.last_ok = 0, 0.0, time.time()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        with self._lock:
            return {
                str(redact_url(url)): {
                    "state": "open" if s.open_until > now else "closed", "failures": s.failures,
                    "retry_in_s": max(0.0, round(s.open_until - now, 1)),
                    "last_error": s.last_error}
                for url, s in self._states.items()
            }


class Router:
    """Builds a Plan for a model name from the admin rows, the mapping file and the default
    upstream."""

    def __init__(self, registry: Registry, default_upstream: Callable[[], str | None],
                 rows_for_model: Callable[[str], list[Any]] | None = None,
                 breaker: Breaker | None = None, rng: random.Random | None = None) -> None:
        self.registry = registry
        self.default_upstream = default_upstream
        self.rows_for_model = rows_for_model
        self.breaker = breaker or Breaker()
        self.rng = rng or random.Random()  # the weighted split of equal-priority rows

    def plan(self, name: str) -> Plan:
        rows = self._rows(name)
        if rows:
            plan = self._from_rows(name, self.weighted(rows))
        else:
            entry = self.registry.lookup(name)
            policy = entry.backend if entry else "ollama"
            if entry is None:
                targets = self._targets(policy, self.default_upstream())
            else:
                targets = self._from_entry(entry)
            plan = Plan(name, policy, targets)
        plan.targets = self._order(plan.targets)
        return plan

    def _from_entry(self, entry: Any) -> list[Target]:
        """A mapping entry's targets: its own `endpoint_url` replaces the default upstream."""
        endpoint = getattr(entry, "endpoint_url", None)
        remote_mlx = entry.backend == "mlx" and bool(endpoint)
        remote_model = getattr(entry, "remote_model", None)
        if remote_mlx and not remote_model:
            remote_model = entry.source or None  # what mlx_lm.server was started with (--model)
        return self._targets(entry.backend, endpoint or self.default_upstream(), None, None,
                             getattr(entry, "api_key_env", None), getattr(entry, "protocol", None),
                             remote_model, remote_mlx=remote_mlx)

    def weighted(self, rows: list[Any]) -> list[Any]:
        """Rows of equal priority in a weighted random order when any of them has a `weight`
        (the A/B split: the first is the one a request tries), else as they came (by id)."""
        groups: dict[int, list[Any]] = {}
        for row in rows:
            groups.setdefault(getattr(row, "priority", 0), []).append(row)
        ordered: list[Any] = []
        for group in groups.values():  # rows come by priority, high first: dicts keep that order
            if len(group) > 1 and any(getattr(r, "weight", None) for r in group):
                group = self._shuffle(group)
            ordered.extend(group)
        return ordered

    def _shuffle(self, group: list[Any]) -> list[Any]:
        """Weighted sampling without replacement (a row without a weight counts as 1)."""
        left, out = list(group), []
        while left:
            weights = [getattr(r, "weight", None) or 1.0 for r in left]
            out.append(left.pop(self.rng.choices(range(len(left)), weights)[0]))
        return out

    def has_rows(self, name: str) -> bool:
        """Whether an enabled admin row names the model."""
        return bool(self._rows(name))

    def _rows(self, name: str) -> list[Any]:
        if self.rows_for_model is None:
            return []
        try:
            return self.rows_for_model(name)
        except Exception as exc:  # a locked or corrupt database must not stop serving
            log.error("backend rows unavailable, using the mapping file model=%s error=%s", name,
                      exc)
            return []

    def _from_rows(self, name: str, rows: list[Any]) -> Plan:
        targets: list[Target] = []
        for row in rows:
            endpoint = row.endpoint_url or self.default_upstream()
            remote_mlx = row.backend_type == "mlx" and bool(row.endpoint_url)
            remote_model = getattr(row, "remote_model", None)
            if remote_mlx and not remote_model:
                remote_model = row.mlx_model  # what mlx_lm.server was started with (--model)
            for t in self._targets(row.backend_type, endpoint, row.mlx_model, row.timeout_seconds,
                                   row.api_key_env, getattr(row, "protocol", None), remote_model,
                                   remote_mlx=remote_mlx):
                if t not in targets:
                    targets.append(t)
        first = rows[0]
        defaults = {k: v for k, v in (("num_predict", first.max_tokens),
                                      ("temperature", first.temperature_default)) if v is not None}
        return Plan(name, first.backend_type, targets, defaults)

    @staticmethod
    def _targets(policy: str, endpoint: str | None, source: str | None = None,
                 timeout: float | None = None, api_key_env: str | None = None,
                 protocol: str | None = None, remote_model: str | None = None,
                 remote_mlx: bool = False) -> list[Target]:
        """The targets of one row or mapping entry. `remote_mlx`: an `mlx` policy whose engine
        is the server at `endpoint` (OpenAI unless `protocol` says otherwise)."""
        if policy == "mlx" and remote_mlx:
            return [Target("mlx", endpoint, timeout=timeout, api_key_env=api_key_env,
                           protocol=protocol or "openai", remote_model=remote_model)]
        mlx = Target("mlx", source=source)
        upstream = ([Target("ollama", endpoint, timeout=timeout, api_key_env=api_key_env,
                            protocol=protocol or "ollama", remote_model=remote_model)]
                    if endpoint else [])
        if policy == "mlx":
            return [mlx]
        if policy == "auto":
            return [mlx, *upstream]
        return upstream

    def _order(self, targets: list[Target]) -> list[Target]:
        """Endpoints in their cool-down go last (still tried when nothing else is left)."""
        healthy = [t for t in targets if not (t.endpoint and self.breaker.is_open(t.endpoint))]
        return healthy + [t for t in targets if t not in healthy]
