"""Attribution as a service: a KServe V1 explain server that batches concurrent callers.

- :class:`ServeConfig`: the model, the address and the limits.
- :func:`local_app` / :func:`run_local`: the local engine (FastAPI + uvicorn, batcher in the event
  loop, model work in a worker thread); :func:`run_ray`: Ray Serve, with ``@serve.batch`` and replicas.
- :class:`ServedModel`: the Explainer behind either engine.

The command line is ``saliency-fast serve`` (:mod:`saliency_fast.serve.cli`). The HTTP libraries
are the ``serve`` extra: this package imports them only when an engine is used.
"""

import importlib

from saliency_fast.serve.config import ServeConfig

_LAZY = {"local_app": "local", "run_local": "local", "run_ray": "ray_engine", "ServedModel": "model"}
__all__ = ["ServeConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"saliency_fast.serve.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
