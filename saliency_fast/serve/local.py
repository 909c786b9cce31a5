"""The local engine: one process, uvicorn serving the app, the batcher in its event loop.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets the requests in flight
finish (up to ``drain_seconds``), then runs the app's shutdown (the batcher stops) and returns.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

from saliency_fast.serve.app import create_app
from saliency_fast.serve.batcher import DynamicBatcher
from saliency_fast.serve.config import ServeConfig
from saliency_fast.serve.metrics import ServeMetrics
from saliency_fast.serve.model import ServedModel

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LocalBackend(DynamicBatcher):
    """The batcher over a model loaded in this process, as the app's backend."""

    def __init__(self, config: ServeConfig, model: ServedModel):
        super().__init__(model, config.max_batch_size, config.max_wait_ms, config.max_queue, ServeMetrics())
        self.name = model.name


def local_app(config: ServeConfig, model: ServedModel | None = None):
    """The ASGI app of the local engine (``model`` defaults to the one ``config`` names, loaded now)."""
    return create_app(config, LocalBackend(config, model or ServedModel.load(config)))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one; ``sock.getsockname()`` says which)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app, config: ServeConfig, log_level: str = "info"):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(
        app, log_level=log_level, access_log=False,  # our middleware logs requests, escaped
        timeout_graceful_shutdown=config.drain_seconds, lifespan="on",
    ))


def run_local(config: ServeConfig, model: ServedModel | None = None, log_level: str = "info") -> None:
    """Serve until SIGTERM/SIGINT; prints ``serving <name> on http://host:port`` once listening."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    app = local_app(config, model)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    print(f"serving {config.model_name} on http://{_url_host(host)}:{port} (engine local)", file=sys.stderr,
          flush=True)
    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found: with this
    # one the process then ends normally (status 0, "drained"), not killed by the signal
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn_server(app, config, log_level).run(sockets=[sock])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
