"""The server's Prometheus metrics (prometheus_client), on a registry of their own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """Requests and errors by endpoint and status, batch sizes, queue depth, request latency."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("saliency_serve_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("saliency_serve_errors", "HTTP requests answered with a status >= 400",
                              ["endpoint", "code"], registry=self.registry)
        self.batch_size = Histogram("saliency_serve_batch_size", "instances per Explainer call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("saliency_serve_queue_depth", "instances waiting for the model",
                                 registry=self.registry)
        self.latency = Histogram("saliency_serve_request_latency_seconds", "time to answer a request",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
