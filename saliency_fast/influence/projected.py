"""Projected per-example gradients of Linear layers, the vectors a TracIn index stores.

Each Linear layer gets a Kronecker-factored Gaussian projection (``P_in [d_in, k_in]``,
``P_out [d_out, k_out]``, ``k_in * k_out`` about ``projection_dim``), and an example's vector is
``vec(sum_t (g_t P_out)^T (a_t P_in))`` for every layer, concatenated: the ``d_out x d_in``
gradient is never built (LoGra's factorisation). Without a projection the vectors are the exact
weight and bias gradients. Vectors of a checkpoint are scaled by ``sqrt(lr)``, so the inner
product of two examples' vectors, concatenated over checkpoints, is their TracIn score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from saliency_fast.influence import gradients as grads_lib


def check_linear_layers(model: nn.Module, layers: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    resolved = grads_lib.resolve_layers(model, list(layers))
    for name, module in resolved:
        if not isinstance(module, nn.Linear):
            raise ValueError(f"layers: {name!r} is a {type(module).__name__}; influence indexes nn.Linear layers only")
    return resolved


def factor_dims(projection_dim: int, d_in: int, d_out: int) -> tuple[int, int]:
    """``(k_in, k_out)`` with ``k_in * k_out`` at most ``projection_dim``: each about its square
    root, and a side that is smaller than that (a classifier head's few outputs) leaves the
    budget to the other, so a narrow layer is not projected further than it must be."""
    side = max(1, math.isqrt(projection_dim))
    if d_out < side:
        return min(d_in, projection_dim // d_out), d_out
    if d_in < side:
        return d_in, min(d_out, projection_dim // d_in)
    return side, side


def make_projections(
    layers: Sequence[tuple[str, nn.Linear]], projection_dim: int | None, seed: int
) -> dict[str, torch.Tensor]:
    """``{f"{name}.in": P_in, f"{name}.out": P_out}`` per layer, float32, drawn from ``seed``
    (empty when ``projection_dim`` is None: exact gradients)."""
    if projection_dim is None:
        return {}
    if not isinstance(projection_dim, int) or projection_dim < 1:
        raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in layers:
        k_in, k_out = factor_dims(projection_dim, module.in_features, module.out_features)
        out[f"{name}.in"] = torch.randn(module.in_features, k_in, generator=gen) / k_in**0.5
        out[f"{name}.out"] = torch.randn(module.out_features, k_out, generator=gen) / k_out**0.5
    return out


def vector_dim(layers: Sequence[tuple[str, nn.Linear]], projections: dict[str, torch.Tensor]) -> int:
    total = 0
    for name, module in layers:
        if projections:
            total += projections[f"{name}.in"].shape[1] * projections[f"{name}.out"].shape[1]
        else:
            total += module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
    return total


def projected_gradients(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Linear]],
    projections: dict[str, torch.Tensor],
    inputs: tuple,
    targets: torch.Tensor,
    loss_fn,
    reduction: str = "sum",
) -> torch.Tensor:
    """``[N, vector_dim]`` float32: each example's projected (or exact) Linear gradients."""
    per_layer = None
    if projections:
        weight = next(iter(layers))[1].weight
        per_layer = {
            name: (
                projections[f"{name}.in"].to(weight.device, weight.dtype),
                projections[f"{name}.out"].to(weight.device, weight.dtype),
            )
            for name, _ in layers
        }
    grads = grads_lib.linear_gradients(model, layers, inputs, targets, loss_fn, reduction, per_layer)
    return torch.cat([g.flatten(1).float() for g in grads], dim=1)
