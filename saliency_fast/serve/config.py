"""``ServeConfig``: what the explain server serves and its limits (plain data, picklable for Ray)."""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib

ENGINE_CHOICES = ("local", "ray")
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_LABELS = ("positive", "negative")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Server options; every field has the default ``saliency-fast serve`` uses.

    Args:
        model: a local model directory, or None for the embedded all-MiniLM-L6-v2.
        name: the model's name in the URLs (default: the directory's name, or all-MiniLM-L6-v2).
        task, labels, reference: as for :class:`~saliency_fast.Explainer` (the default model is a
            zero-shot sentiment classifier with labels positive/negative).
        host, port: where to listen; 127.0.0.1 unless asked (port 0: any free port).
        max_batch_size: texts per Explainer call at most.
        max_wait_ms: how long the first request of a batch waits for others to join it.
        max_queue: instances waiting at most; beyond it requests get 503 with ``Retry-After``.
        max_body_bytes: request bodies above this get 413.
        token: when set, requests need ``Authorization: Bearer <token>`` (else 401).
        engine: ``local`` (one process) or ``ray`` (Ray Serve).
        replicas: Ray engine: model replicas.
        device: torch device (default: cuda when available, else cpu).
        drain_seconds: on SIGTERM, how long in-flight requests may take to finish.
    """

    model: str | None = None
    name: str | None = None
    task: str = "auto"
    labels: tuple[str, ...] | None = None
    reference: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 1 << 20
    token: str | None = dataclasses.field(default=None, repr=False)
    engine: str = "local"
    replicas: int = 1
    device: str | None = None
    drain_seconds: float = 30.0

    def __post_init__(self) -> None:
        for field in ("max_batch_size", "max_queue", "max_body_bytes", "replicas"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {self.port!r}")
        for field in ("max_wait_ms", "drain_seconds"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{field} must be a number >= 0, got {value!r}")
        if self.engine not in ENGINE_CHOICES:
            raise ValueError(f"engine must be one of {ENGINE_CHOICES}, got {self.engine!r}")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise ValueError("token must be a non-empty string (the token file is empty?)")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a host name or IP address, got {self.host!r}")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def model_name(self) -> str:
        if self.name is not None:
            return self.name
        return DEFAULT_MODEL_NAME if self.model is None else pathlib.Path(self.model).expanduser().resolve().name

    @property
    def explainer_task(self) -> str:
        """As ``saliency-fast explain``: the default model is a zero-shot classifier unless told otherwise."""
        if self.model is None and self.task == "auto":
            return "similarity" if self.reference is not None else "zero-shot"
        return self.task

    @property
    def explainer_labels(self) -> list[str] | None:
        if self.labels is None and self.explainer_task == "zero-shot":
            return list(DEFAULT_LABELS)
        return None if self.labels is None else list(self.labels)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def read_token_file(path) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped); a clear error if unusable."""
    path = pathlib.Path(path).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--token-file {str(path)!r} cannot be read: {exc}") from exc
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"--token-file {str(path)!r} must hold one token (non-empty, no whitespace inside)")
    return token
