"""The bridge's long-lived objects, hung on the Flask app as one `Bridge`, and `bridge()`.

Every blueprint and hook reaches app state through `bridge()` (never `app.extensions` keys of its
own), so what a request can touch is listed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:  # types only: the modules below import this one for the accessor
    from bridge.config import Config
    from bridge.engine.structured import TokenizerTables
    from bridge.http.auth import KeyGate
    from bridge.http.limits import Limits
    from bridge.http.security import Guard
    from bridge.importer.hub import Puller
    from bridge.routing.registry import Registry
    from bridge.routing.router import Router
    from bridge.routing.upstream import Upstream
    from bridge.serving.local import LocalBackend
    from bridge.stats.metrics import Metrics
    from bridge.stats.store import Store
    from bridge.stats.tracking import Tracker

DEFAULT_UPSTREAM = "http://127.0.0.1:11435"
NO_UPSTREAM = ("none", "off", "")
KEY = "bridge"  # the one app.extensions key


def default_upstream(config: Config, registry: Registry) -> str | None:
    """The default upstream Ollama; None when disabled (`--upstream none`)."""
    url = config.upstream or registry.upstream or DEFAULT_UPSTREAM
    return None if url.strip().lower() in NO_UPSTREAM else url.rstrip("/")


@dataclass
class Bridge:
    """Everything a request needs; `create_app` builds it and stores it on the app."""

    config: Config
    registry: Registry
    local: LocalBackend  # MLX side: names -> model dirs -> engine jobs
    upstream: Upstream  # HTTP client for upstream Ollamas
    router: Router  # name -> Plan (targets in order)
    store: Store  # backend rows, API keys, request log (SQLite or PostgreSQL)
    tracker: Tracker  # request records -> metrics + store
    metrics: Metrics
    limits: Limits  # request size caps
    guard: Guard  # Host/Origin checks
    puller: Puller  # /api/pull downloads (holds the per-repo locks)
    tables: TokenizerTables  # structured output's llguidance tables, one per tokenizer
    keys: KeyGate | None = None  # API keys and their limits on the model endpoints

    @property
    def upstream_url(self) -> str | None:
        return default_upstream(self.config, self.registry)

    def start(self) -> None:
        """Start background threads; called in the serving process after any fork."""
        self.upstream.stopping.clear()
        self.local.engine.start()
        self.tracker.start()

    def stop(self) -> None:
        self.upstream.stop()  # forwarded streams end with an error line too
        self.local.engine.stop()
        self.tracker.stop()
        self.store.close()  # reopened on demand if the app is used again


def bridge() -> Bridge:
    """The serving app's Bridge (inside a request or app context)."""
    return current_app.extensions[KEY]


def bridge_of(app: Flask) -> Bridge:
    """An app's Bridge outside any context (startup, shutdown hooks)."""
    return app.extensions[KEY]
