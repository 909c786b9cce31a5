"""The Ray engine: Ray Serve, with the model in replicas that batch with ``@serve.batch``.

Two deployments: ``SaliencyIngress`` runs the same FastAPI app as the local engine (auth, limits,
metrics, KServe routes) and sends each instance to ``SaliencyModel``, whose ``@serve.batch``
method gathers instances from all callers; each batch is grouped by operation and parameters and
runs :meth:`ServedModel.run` in a worker thread. ``replicas`` copies of the model serve in
parallel, one GPU each when the cluster has GPUs. Ray Serve's proxy listens on host:port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading

from ray import serve

from saliency_fast.serve.app import create_app
from saliency_fast.serve.batcher import RETRY_AFTER_SECONDS
from saliency_fast.serve.config import ServeConfig
from saliency_fast.serve.metrics import ServeMetrics
from saliency_fast.serve.model import ServedModel
from saliency_fast.serve.protocol import ServeError

APP_NAME = "saliency-fast"


@serve.deployment
class SaliencyModel:
    """A replica of the model; ``run`` calls from every caller are batched by ``@serve.batch``."""

    def __init__(self, config: ServeConfig):
        self.model = ServedModel.load(config)
        self.run.set_max_batch_size(config.max_batch_size)
        self.run.set_batch_wait_timeout_s(config.max_wait_ms / 1000.0)

    def describe(self) -> dict:
        return self.model.describe()

    @serve.batch
    async def run(self, calls: list[tuple]) -> list[tuple]:
        """``calls``: ``(operation, instance, parameters)`` each; returns ``(outcome, batch size)``
        each, the size given on the first instance of each Explainer call and 0 on the others."""
        groups: dict[tuple, list[int]] = {}
        for i, (operation, _, parameters) in enumerate(calls):
            groups.setdefault((operation, None if parameters is None else parameters.key()), []).append(i)
        answers: list = [None] * len(calls)
        for members in groups.values():
            operation, _, parameters = calls[members[0]]
            outcomes = await asyncio.to_thread(self.model.run, operation, [calls[i][1] for i in members], parameters)
            for rank, (i, outcome) in enumerate(zip(members, outcomes)):
                answers[i] = (outcome, len(members) if rank == 0 else 0)
        return answers


class RayBackend:
    """The app's backend in the ingress replica: instances go to the model deployment's handle."""

    def __init__(self, config: ServeConfig, handle):
        self.name = config.model_name
        self.metrics = ServeMetrics()
        self.max_queue = config.max_queue
        self.handle = handle
        self.waiting = 0
        self.ready = False

    async def start(self) -> None:
        await self.handle.describe.remote()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False

    async def submit(self, operation: str, instances: list, parameters) -> list:
        if len(instances) > self.max_queue:
            raise ServeError(413, f"a request holds at most {self.max_queue} instances, got {len(instances)}",
                             limit=self.max_queue)
        if self.waiting + len(instances) > self.max_queue:
            raise ServeError(503, "the queue is full; retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.waiting += len(instances)
        self.metrics.queue_depth.set(self.waiting)
        try:
            answers = await asyncio.gather(*(self.handle.run.remote((operation, instance, parameters))
                                             for instance in instances))
        finally:
            self.waiting -= len(instances)
            self.metrics.queue_depth.set(self.waiting)
        for _, batch_size in answers:
            if batch_size:
                self.metrics.batch_size.observe(batch_size)
        return [outcome for outcome, _ in answers]


@serve.ingress()
class SaliencyIngress:
    """The HTTP entry: the local engine's app over a :class:`RayBackend`."""

    def __init__(self, model_handle, config: ServeConfig):
        self.config = config
        self.backend = RayBackend(config, model_handle)

    def __serve_build_asgi_app__(self):
        return create_app(self.config, self.backend)


def deploy(config: ServeConfig) -> None:
    """Deploy the app on the connected Ray cluster (``ray.init`` first) and return once it is ready."""
    import torch

    # the ingress holds every waiting instance; each model replica, a batch at work and the next one forming
    model = SaliencyModel.options(
        num_replicas=config.replicas, max_ongoing_requests=2 * config.max_batch_size,
        graceful_shutdown_timeout_s=config.drain_seconds,
        ray_actor_options={"num_gpus": 1 if torch.cuda.is_available() and config.device in (None, "cuda") else 0},
    ).bind(config)
    ingress = serve.deployment(SaliencyIngress).options(
        max_ongoing_requests=config.max_queue + 64, graceful_shutdown_timeout_s=config.drain_seconds,
        ray_actor_options={"num_cpus": 0},  # it waits on the model; the CPUs are the model's
    ).bind(model, config)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(ingress, name=APP_NAME, route_prefix="/")


def run_ray(config: ServeConfig, log_level: str = "info") -> None:
    """Start (or join, with ``RAY_ADDRESS``) a Ray cluster, deploy, and serve until SIGTERM/SIGINT;
    then the replicas drain the requests in flight (``drain_seconds``) and Ray Serve shuts down."""
    import ray

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr)
    if config.port == 0:
        raise ValueError("the Ray engine needs a fixed --port (Ray Serve's proxy cannot pick a free one)")
    ray.init(ignore_reinit_error=True, include_dashboard=False, logging_level=log_level.upper())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        deploy(config)
        print(f"serving {config.model_name} on http://{config.host}:{config.port} (engine ray, "
              f"{config.replicas} replica{'s' if config.replicas > 1 else ''})", file=sys.stderr, flush=True)
        stop.wait()
        # deleting the app first lets its replicas finish the requests they hold (each waits up to
        # drain_seconds) while the proxy still answers their callers; shutdown() alone drops them
        serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
