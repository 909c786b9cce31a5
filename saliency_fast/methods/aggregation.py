"""Turning attributions into token scores: :func:`aggregate` over the embedding (last) dim and
:func:`normalize` of score vectors (last dim). Both take a tensor or a tuple of tensors."""

from __future__ import annotations

import torch

from saliency_fast import reference

AGGREGATIONS = ("none", "sum", "l2", "abs_sum", "max_abs", "dot")
NORMALIZATIONS = ("sum_to_one", "max_abs", "l1", "l2")


def aggregate(attr, how: str, inputs=None):
    """Reduce the last (embedding) dim of ``attr``.

    ``none`` keeps it; ``sum``; ``l2`` (Euclidean norm); ``abs_sum`` (L1 norm); ``max_abs`` (the
    largest absolute value, L-infinity norm); ``dot``: ``sum(attr * inputs)``, e.g. gradient ·
    embedding when ``attr`` holds gradients (``inputs`` required, same shape).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    if isinstance(attr, tuple):
        if how == "dot" and not (isinstance(inputs, tuple) and len(inputs) == len(attr)):
            raise ValueError(f"how='dot' with a tuple of attributions needs a tuple of {len(attr)} inputs")
        pairs = zip(attr, inputs if how == "dot" else (None,) * len(attr))
        return tuple(_aggregate(a, how, x) for a, x in pairs)
    return _aggregate(attr, how, inputs)


def _aggregate(attr, how: str, inputs) -> torch.Tensor:
    if not isinstance(attr, torch.Tensor):
        raise TypeError(f"attr must be a torch.Tensor (or a tuple of them), got {type(attr).__name__}")
    if attr.dim() < 1:
        raise ValueError("attr must have at least one dim (the last is aggregated), got a scalar")
    if how == "dot":
        if not isinstance(inputs, torch.Tensor):
            raise ValueError("how='dot' needs inputs (the embeddings the gradients were taken at)")
        if inputs.shape != attr.shape:
            raise ValueError(f"inputs must have attr's shape {tuple(attr.shape)} for how='dot', got {tuple(inputs.shape)}")
        return (attr * inputs).sum(-1)
    if how == "max_abs":
        return attr.abs().amax(-1)
    return reference.reduce_last_dim(attr, how)


def normalize(scores, how: str):
    """Scale each vector along the last dim: ``sum_to_one`` (divide by the sum; meant for
    non-negative scores), ``max_abs`` (by the largest absolute value), ``l1`` (by the sum of absolute
    values), ``l2`` (by the Euclidean norm).

    NaN entries (e.g. masked positions) stay NaN and are left out of the denominators; a vector
    whose denominator is 0 (all zeros, or for ``sum_to_one`` a zero sum) is returned unchanged, so
    zero vectors stay zero and nothing becomes NaN or inf.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"how must be one of {NORMALIZATIONS}, got {how!r}")
    if isinstance(scores, tuple):
        return tuple(_normalize(s, how) for s in scores)
    return _normalize(scores, how)


def _normalize(scores, how: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor (or a tuple of them), got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must have a floating dtype, got {scores.dtype}")
    if scores.dim() < 1:
        raise ValueError("scores must have at least one dim (the last is normalized), got a scalar")
    known = torch.nan_to_num(scores, nan=0.0)
    if how == "sum_to_one":
        denominator = known.sum(-1, keepdim=True)
    elif how == "max_abs":
        denominator = known.abs().amax(-1, keepdim=True) if scores.shape[-1] else known.sum(-1, keepdim=True)
    elif how == "l1":
        denominator = known.abs().sum(-1, keepdim=True)
    else:
        denominator = torch.linalg.vector_norm(known, dim=-1, keepdim=True)
    return scores / torch.where(denominator == 0, torch.ones_like(denominator), denominator)
