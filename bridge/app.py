"""The Flask application factory: builds the bridge's objects and hangs them on the app."""

from __future__ import annotations

import logging

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
from bridge.api import ui as ui_api
from bridge.config import Config, load_config
from bridge.engine import Engine
from bridge.engine.structured import TokenizerTables
from bridge.http import auth, web
from bridge.http.limits import Limits
from bridge.http.security import Guard
from bridge.importer.hub import Puller
from bridge.routing.registry import Registry
from bridge.routing.router import Router
from bridge.routing.upstream import Upstream, remote_cap
from bridge.serving.local import LocalBackend
from bridge.state import KEY, Bridge, bridge, default_upstream
from bridge.stats.metrics import Metrics
from bridge.stats.store import DB_FILE, Store
from bridge.stats.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = ["Bridge", "bridge", "create_app"]


def create_app(config: Config | None = None, *, engine: Engine | None = None,
               upstream: Upstream | None = None) -> Flask:
    """Build the app. Nothing is started here: call `bridge().start()` (or
    `app.extensions["bridge"].start()`). `engine` and `upstream` replace the real ones (tests)."""
    config = config or load_config()
    config.home.mkdir(parents=True, exist_ok=True)
    registry = Registry(config.mappings_path, config.home)
    engine = engine or Engine(keep_alive=config.keep_alive, max_loaded=config.max_loaded_models,
                              max_queue=config.max_queue, num_parallel=config.num_parallel,
                              max_embed_tokens=config.max_embed_tokens,
                              max_model_bytes=config.max_model_bytes,
                              kv_cache_type=config.kv_cache_type,
                              warm_start=config.warm_start)
    store = Store(config.database_url or config.home / DB_FILE)
    metrics = Metrics(engine.snapshot)
    keys = auth.KeyGate(config, store, metrics)
    app = Flask(__name__)
    app.extensions[KEY] = Bridge(
        config=config, registry=registry, local=LocalBackend(registry, engine),
        upstream=upstream or Upstream(config.connect_timeout, config.request_timeout,
                                      remote_cap(config.threads)),
        router=Router(registry, lambda: default_upstream(config, registry),
                      rows_for_model=store.rows_for_model),
        store=store, metrics=metrics, keys=keys,
        tracker=Tracker(store, metrics, bridge_id=config.bridge_id,
                        on_usage=keys.limiter.add_tokens),
        limits=Limits.from_config(config), guard=Guard.from_config(config),
        puller=Puller(registry.downloads_dir), tables=TokenizerTables())
    web.install(app)
    auth.install(app)
    auth.warn_if_exposed(config, store)
    for blueprint in (models_api.bp, api.bp, openai_api.bp, anthropic_api.bp, responses_api.bp,
                      proxy_api.bp, pull_api.bp, admin.bp, gateway_api.bp, ui_api.bp):
        app.register_blueprint(blueprint)
    return app
