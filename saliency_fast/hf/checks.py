"""Checks and small pieces shared by the Explainer and the generation engine (a leaf of ``hf``:
it imports nothing from the package, so both can use it without importing each other)."""

from __future__ import annotations

import contextlib

AGGREGATE_CHOICES = ("none", "sum", "l2", "abs_sum", "dot")
ATTENTION_LAYERS = ("last", "mean")


class NonFiniteAttributionError(FloatingPointError, ValueError):
    """Gradients or scores became NaN/inf (half-precision overflow, a NaN in the model)."""


def conservation_metadata(relevance: list[float], scores: list[float]) -> dict:
    """LRP's conservation, one entry per target: the sum of relevance over every input token and
    the attributed score (the target's logit by default), as lists."""
    return {"relevance_sum": [float(r) for r in relevance], "score": [float(s) for s in scores]}


def check_attention_kwargs(kwargs: dict) -> None:
    """The ``attention`` method's option: ``layers`` (the registry runs this before any work)."""
    layers = kwargs.get("layers", "last")
    if not isinstance(layers, str) or layers not in ATTENTION_LAYERS:
        raise ValueError(f"layers must be one of {ATTENTION_LAYERS} for method 'attention', got {layers!r}")


def check_aggregate(aggregate) -> None:
    if not isinstance(aggregate, str) or aggregate not in AGGREGATE_CHOICES:
        raise ValueError(f"aggregate must be one of {AGGREGATE_CHOICES}, got {aggregate!r}")


@contextlib.contextmanager
def eager_attention(model):
    """Run with the eager attention kernel, the one that can return attention weights."""
    previous = getattr(model.config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)
