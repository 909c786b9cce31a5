"""Pure-PyTorch reference of every native op: the specification each kernel must match.

Every function here is written for clarity, not speed, from plain differentiable torch ops,
so autograd (including double backward) comes for free. The native kernels in ``csrc/`` are
tested against these on random inputs in every dtype they accept.

Shape conventions: ``x`` and ``baseline`` share a shape ``S = (..., D)`` whose last dim is the
embedding dim; a leading "step" dim of size ``m`` indexes points on an attribution path.
"""

from __future__ import annotations

import torch

from saliency_fast import _checks

def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic is carried out in: float32 for half types, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce_last_dim(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce the embedding (last) dim: ``none`` keeps it, ``sum``, ``l2`` norm, ``abs_sum``."""
    if reduce == "none":
        return values
    if reduce == "sum":
        return values.sum(-1)
    if reduce == "l2":
        return torch.linalg.vector_norm(values, ord=2, dim=-1)
    if reduce == "abs_sum":
        return values.abs().sum(-1)
    raise ValueError(f"reduce must be one of {_checks.REDUCE_CHOICES}, got {reduce!r}")


def ig_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Points on the straight line from ``baseline`` to ``x``: ``out[k] = b + alphas[k] * (x - b)``.

    Returns shape ``(len(alphas), *x.shape)`` in ``x.dtype``; the arithmetic runs in the opmath
    dtype (float32 for half types) so low-precision inputs round once, at the end.
    """
    _checks.check_interpolate_args(x, baseline, alphas)
    acc = opmath_dtype(x.dtype)
    xo, bo = x.to(acc), baseline.to(acc)
    a = alphas.to(acc).reshape((-1,) + (1,) * x.dim())
    return (bo + a * (xo - bo)).to(x.dtype)


def ig_accumulate(
    grads: torch.Tensor,
    weights: torch.Tensor,
    x: torch.Tensor,
    baseline: torch.Tensor,
    reduce: str = "none",
    partial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused path-integral accumulation: ``reduce(partial + (x - b) * sum_k weights[k] * grads[k])``.

    ``grads`` has shape ``(m, *S)``, ``weights`` shape ``(m,)``. The unreduced quantity is linear
    in the steps, so a caller feeding steps chunk by chunk passes each chunk's ``reduce="none"``
    result as ``partial`` of the next call and asks for the final ``reduce`` on the last chunk.
    ``partial`` has shape ``S`` and dtype ``x.dtype`` or its opmath dtype (float32 for half
    types, so chunked accumulation need not round in between); the result has ``partial``'s
    dtype when given, else ``x.dtype``. Reductions: see :func:`reduce_last_dim`.
    """
    _checks.check_accumulate_args(grads, weights, x, baseline, reduce, partial)
    acc = opmath_dtype(x.dtype)
    out_dtype = partial.dtype if partial is not None else x.dtype
    w = weights.to(acc).reshape((-1,) + (1,) * x.dim())
    total = (grads.to(acc) * w).sum(0) * (x.to(acc) - baseline.to(acc))
    if partial is not None:
        total = total + partial.to(acc)
    return reduce_last_dim(total, reduce).to(out_dtype)
