"""Run the app under gunicorn: one worker process (one copy of the weights), gthread threads."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from bridge.config import Config
from bridge.http.worker import EXIT_MARGIN
from bridge.service.logfile import ServerLogHandler, rotation_limits

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
DEFAULT_GRACE = 30.0
ENGINE_FAILED_EXIT = 70  # EX_SOFTWARE: the worker's MLX engine crashed too often to restart
_LAST_LINES_WAIT = 1.0  # for request threads to send the error lines the engine just queued
MLX_LM_NOFILE = 2048  # the soft open-files limit mlx_lm.utils sets when it is imported
FD_RESERVE = 128  # descriptors kept for model files, the database, logs, pipes


def setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    """Quiet by default (warnings plus model load/unload); everything with --verbose."""
    handlers = [ServerLogHandler(log_file, *rotation_limits())] if log_file else None
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format=LOG_FORMAT,
                        handlers=handlers)
    if not verbose:
        for name in ("bridge.engine", "bridge.http.server", "bridge.serving.local"):
            logging.getLogger(name).setLevel(logging.INFO)


# Seconds an idle kept-alive connection stays open. Longer than client pools keep one (Go's
# http.Transport 90 s, aiohttp 15 s as in Open WebUI, httpx 5 s), so the client always closes
# first: a server that closes at the moment a pooled connection is reused fails that request
# ("Server disconnected"). Ollama's Go server sets no idle timeout at all. An idle connection
# costs a descriptor on the main loop, never a thread, and worker_connections caps them.
KEEPALIVE = 120


class BridgeServer(BaseApplication):
    """gunicorn application wrapping `create_app`; the app is built in the worker, after fork."""

    def __init__(self, config: Config, grace: float = DEFAULT_GRACE) -> None:
        self.bridge_config = config
        self.grace = grace
        super().__init__()

    def load_config(self) -> None:
        c = self.bridge_config
        settings: dict[str, Any] = {
            "bind": [c.host.bind],
            "workers": 1,  # MLX weights live in-process: more workers would mean more copies
            # gthread, plus a graceful stop that refuses new connections at once
            "worker_class": "bridge.http.worker.BridgeWorker",
            "threads": c.threads,
            # Connections are read on the main loop (bridge/http/worker.py) and cost no thread until
            # their request is complete, so many slow ones fit; never more than the fds allow.
            "worker_connections": connection_limit(c.threads),
            "timeout": 120,  # heartbeat of the worker's main loop, not a per-request limit
            "graceful_timeout": int(self.grace + EXIT_MARGIN + 0.999),  # gunicorn wants an int
            "keepalive": KEEPALIVE,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "debug" if c.verbose else "warning",
            "proc_name": "mlx-bridge",
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from bridge.app import create_app

        return create_app(self.bridge_config)


def connection_limit(threads: int) -> int:
    """The worker's cap on open connections: what its open-files limit leaves room for.

    Each connection is a descriptor, and so is each forwarded request's upstream socket (one
    per thread). The soft limit is raised to the hard one first (Go's runtime does so for
    Ollama), but mlx_lm, imported by the engine thread, then sets it to (2048, 4096) itself.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited:
        for want in (hard, 65536, 10240):  # macOS refuses more than its per-process maximum
            if want != unlimited and soft < want and (hard == unlimited or want <= hard):
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                    soft = want
                    break
    usable = MLX_LM_NOFILE if soft == unlimited else min(soft, MLX_LM_NOFILE)
    return max(threads + 1, usable - threads - FD_RESERVE)


def _post_worker_init(worker: Any) -> None:
    """Start the engine thread inside the worker process (threads do not survive fork)."""
    bridge = worker.wsgi.extensions["bridge"]
    bridge.local.engine.on_fatal = _exit_worker
    bridge.start()
    log.info("mlx-bridge ready pid=%s", worker.pid)


def _exit_worker() -> None:
    """The engine cannot restart: end this worker (gunicorn's master starts a fresh one).

    Every job has its error event already; after a moment for those lines to go out, exit at
    once: a normal exit would run MLX's thread-local destructors during interpreter shutdown.
    """
    log.critical("MLX engine failed for good, ending the worker pid=%s exit_code=%d", os.getpid(),
                 ENGINE_FAILED_EXIT)
    time.sleep(_LAST_LINES_WAIT)
    logging.shutdown()
    os._exit(ENGINE_FAILED_EXIT)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if app is not None:
        app.extensions["bridge"].stop()


def serve(config: Config, *, log_file: Path | None = None, grace: float = DEFAULT_GRACE) -> None:
    """Run in the foreground until SIGTERM/SIGINT (SIGTERM drains for `grace` seconds)."""
    setup_logging(config.verbose, log_file)
    log.warning("mlx-bridge listening on http://%s (mappings=%s)", config.host.bind,
                config.mappings_path)
    BridgeServer(config, grace).run()
