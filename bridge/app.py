"""The Flask application factory: builds the bridge's objects and hangs them on the app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask

from . import api, models_api, web
from .config import Config, load_config
from .engine import Engine
from .local import LocalBackend
from .registry import Registry

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "http://127.0.0.1:11435"


@dataclass
class Bridge:
    """Everything a request needs, stored in `app.extensions["bridge"]`."""

    config: Config
    registry: Registry
    local: LocalBackend

    @property
    def upstream_url(self) -> str:
        return self.config.upstream or self.registry.upstream or DEFAULT_UPSTREAM

    def start(self) -> None:
        """Start background threads; called in the serving process after any fork."""
        self.local.engine.start()

    def stop(self) -> None:
        self.local.engine.stop()


def create_app(config: Config | None = None, *, engine: Engine | None = None) -> Flask:
    """Build the app. Nothing is started here: call `app.extensions["bridge"].start()`."""
    config = config or load_config()
    config.home.mkdir(parents=True, exist_ok=True)
    registry = Registry(config.mappings_path, config.home)
    engine = engine or Engine(keep_alive=config.keep_alive, max_loaded=config.max_loaded_models,
                              max_queue=config.max_queue)
    app = Flask(__name__)
    app.extensions["bridge"] = Bridge(config, registry, LocalBackend(registry, engine))
    web.install(app)
    app.register_blueprint(models_api.bp)
    app.register_blueprint(api.bp)
    return app
