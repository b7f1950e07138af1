"""The Flask application factory: builds the bridge's objects and hangs them on the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flask import Flask

from bridge.api import admin
from bridge.api import anthropic as anthropic_api
from bridge.api import gateway as gateway_api
from bridge.api import generate as api
from bridge.api import models as models_api
from bridge.api import openai as openai_api
from bridge.api import proxy as proxy_api
from bridge.api import pull as pull_api
from bridge.api import responses as responses_api
from bridge.config import Config, load_config
from bridge.engine import Engine
from bridge.http import web
from bridge.routing.registry import Registry
from bridge.routing.router import Router
from bridge.routing.upstream import Upstream
from bridge.serving.local import LocalBackend
from bridge.stats.metrics import Metrics
from bridge.stats.store import DB_FILE, Store
from bridge.stats.tracking import Tracker

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "http://127.0.0.1:11435"
NO_UPSTREAM = ("none", "off", "")


@dataclass
class Bridge:
    """Everything a request needs, stored in `app.extensions["bridge"]`."""

    config: Config
    registry: Registry
    local: LocalBackend
    upstream: Upstream = field(default_factory=Upstream)
    router: Router | None = None
    store: Store | None = None  # backend rows + request log (SQLite)
    tracker: Tracker | None = None
    metrics: Metrics | None = None

    @property
    def upstream_url(self) -> str | None:
        """The default upstream Ollama; None when disabled (`--upstream none`)."""
        url = self.config.upstream or self.registry.upstream or DEFAULT_UPSTREAM
        return None if url.strip().lower() in NO_UPSTREAM else url.rstrip("/")

    def start(self) -> None:
        """Start background threads; called in the serving process after any fork."""
        self.upstream.stopping.clear()
        self.local.engine.start()
        if self.tracker:
            self.tracker.start()

    def stop(self) -> None:
        self.upstream.stop()  # forwarded streams end with an error line too
        self.local.engine.stop()
        if self.tracker:
            self.tracker.stop()
        if self.store:
            self.store.close()  # reopened on demand if the app is used again


def create_app(config: Config | None = None, *, engine: Engine | None = None) -> Flask:
    """Build the app. Nothing is started here: call `app.extensions["bridge"].start()`."""
    config = config or load_config()
    config.home.mkdir(parents=True, exist_ok=True)
    registry = Registry(config.mappings_path, config.home)
    engine = engine or Engine(keep_alive=config.keep_alive, max_loaded=config.max_loaded_models,
                              max_queue=config.max_queue, num_parallel=config.num_parallel,
                              max_embed_tokens=config.max_embed_tokens)
    app = Flask(__name__)
    bridge = Bridge(config, registry, LocalBackend(registry, engine),
                    upstream=Upstream(config.connect_timeout, config.request_timeout))
    bridge.store = Store(config.home / DB_FILE)
    bridge.router = Router(registry, lambda: bridge.upstream_url, rows_for_model=bridge.store.rows_for_model)
    bridge.metrics = Metrics(engine.snapshot)
    bridge.tracker = Tracker(bridge.store, bridge.metrics)
    app.extensions["bridge"] = bridge
    web.install(app)
    app.register_blueprint(models_api.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(anthropic_api.bp)
    app.register_blueprint(responses_api.bp)
    app.register_blueprint(proxy_api.bp)
    app.register_blueprint(pull_api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(gateway_api.bp)
    return app
