"""Option defaults and checks shared by generation's methods (:mod:`saliency_fast.hf.generation`) and
its layer attribution (:mod:`saliency_fast.hf.causal_layers`): a leaf both import."""

from __future__ import annotations

import numbers

import numpy as np

IG_DEFAULTS = {"n_steps": 50, "quadrature": "gausslegendre", "rtol": 0.01, "atol": 0.0, "min_steps": 3, "max_steps": 127}


def default_rows(cp, n_points: int, targets: int | None = None) -> int:
    """Points per forward: as many as fill the token budget with a full chunk of ``targets`` targets
    (default ``cp.target_batch_size``), spread evenly over the batches (16 points at most 5 a batch:
    4 x 4, not 5 + 5 + 5 + 1)."""
    targets = cp.target_batch_size if targets is None else targets
    most = max(1, min(n_points, cp.max_batch_tokens // (targets * cp.prefix_length)))
    return -(-n_points // -(-n_points // most))


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)
