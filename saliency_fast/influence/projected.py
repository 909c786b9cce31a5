"""Projected per-example gradients of Linear layers, the vectors a TracIn index stores.

Each Linear layer gets a Kronecker-factored random orthogonal projection (``P_in [d_in + 1, k_in]``,
``P_out [d_out, k_out]``, ``k_in * k_out`` at most ``projection_dim``; the bias is the input's
constant-1 feature), and an example's vector is ``vec(P_out^T [G, b] P_in)`` with
``G = sum_t g_t^T a_t``, computed as ``sum_t (g_t P_out)^T (a_t P_in)`` so the ``d_out x d_in``
gradient is never built (LoGra's factorisation). A side at full width is not projected, and a
layer whose whole gradient fits in ``projection_dim`` is kept exact (:func:`layer_dims`). Without
a projection the vectors are the exact weight and bias gradients. Vectors of a checkpoint are scaled by ``sqrt(lr)``, so the inner
product of two examples' vectors, concatenated over checkpoints, is their TracIn score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from saliency_fast import ops
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


def _orthogonal(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``[d, k]``: k orthonormal columns of a random rotation, times ``sqrt(d / k)`` so that
    ``E[P P^T] = I`` (inner products kept in expectation, with less variance than Gaussian)."""
    q, r = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # a Haar-distributed basis, not one QR happens to prefer
    return (q * (d / k) ** 0.5).float()


KINDS = ("pca", "random")
SPLITS = tuple(2**i for i in range(16))  # the k_in a fitted layer may take (k_out = budget // k_in)


def make_projections(
    layers: Sequence[tuple[str, nn.Linear]],
    projection_dim: int | None,
    seed: int,
    kind: str = "random",
    sample: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    weights: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """``{f"{name}.in": P_in, f"{name}.out": P_out}``, float32, for each side of each layer that
    is reduced; a side left out is kept exact. Empty when ``projection_dim`` is None (exact
    gradients). A layer's bias is its input side's extra constant-1 feature, so ``P_in`` has
    ``d_in + 1`` rows when the layer has a bias.

    ``kind="random"``: random orthogonal sides drawn from ``seed``, split by :func:`layer_dims`.
    ``kind="pca"``: fitted to ``sample`` (per checkpoint, per layer, the factors ``(a, g)`` of some
    training rows; ``weights``: the checkpoints' learning rates) by :func:`fit_layer`."""
    if projection_dim is None:
        return {}
    check_projection(projection_dim, kind)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, module) in enumerate(layers):
        d_in = module.in_features + (module.bias is not None)
        if kind == "pca":
            p_in, p_out = fit_layer(module, [factors[i] for factors in sample], weights, projection_dim)
        else:
            k_in, k_out = layer_dims(projection_dim, module)
            p_in = _orthogonal(d_in, k_in, gen) if k_in < d_in else None
            p_out = _orthogonal(module.out_features, k_out, gen) if k_out < module.out_features else None
        if p_in is not None:
            out[f"{name}.in"] = p_in
        if p_out is not None:
            out[f"{name}.out"] = p_out
    return out


def check_projection(projection_dim: int | None, kind: str) -> None:
    if projection_dim is not None and (isinstance(projection_dim, bool) or not isinstance(projection_dim, int)
                                       or projection_dim < 1):
        raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}")
    if kind not in KINDS:
        raise ValueError(f"projection must be one of {KINDS}, got {kind!r}")


def layer_dims(projection_dim: int, module: nn.Linear) -> tuple[int, int]:
    """The split of a random projection: a layer whose whole gradient (weight and bias,
    ``d_out * (d_in + 1)`` numbers) fits in ``projection_dim`` is kept exact; otherwise
    :func:`factor_dims` splits the budget, and a side it leaves at full width (a two-class head's
    outputs) is not projected at all."""
    d_in = module.in_features + (module.bias is not None)
    if d_in * module.out_features <= projection_dim:
        return d_in, module.out_features
    return factor_dims(projection_dim, d_in, module.out_features)


def _with_ones(a: torch.Tensor, module: nn.Linear) -> torch.Tensor:
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1) if module.bias is not None else a


def fit_layer(module: nn.Linear, factors: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float],
              projection_dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A layer's ``(P_in, P_out)`` fitted to sample gradients ``G_n = sum_t g_t^T [a_t, 1]`` (one
    ``(a, g)`` per checkpoint, weighted by ``weights``): the leading eigenvectors of
    ``sum_n G_n^T G_n`` and of ``sum_n G_n G_n^T`` (the directions that hold most of the
    gradients' energy on each side; computed from the factors, no ``G_n`` built), with the split
    ``k_in * k_out <= projection_dim`` (``k_in`` a power of two) that keeps the most of that energy
    in the sample. A layer whose whole gradient fits is kept exact (None, None)."""
    d_in, d_out = module.in_features + (module.bias is not None), module.out_features
    if d_in * d_out <= projection_dim:
        return None, None
    # float32 is enough for the leading eigenvectors, and twice as fast as float64 here
    sides = [(_with_ones(a, module).float(), g.float(), float(w)) for (a, g), w in zip(factors, weights)]
    first = sides[0][0]
    if all(torch.equal(a, first) for a, _, _ in sides[1:]):  # inputs the checkpoints share: one product
        mixed = sum(w * (g @ g.transpose(1, 2)) for _, g, w in sides)
        c_in = first.flatten(0, 1).T @ (mixed @ first).flatten(0, 1)
    else:
        c_in = sum(w * (a.flatten(0, 1).T @ (g @ g.transpose(1, 2) @ a).flatten(0, 1)) for a, g, w in sides)
    c_out = sum(w * (g.flatten(0, 1).T @ (a @ a.transpose(1, 2) @ g).flatten(0, 1)) for a, g, w in sides)
    v_in = _leading_eigenvectors(c_in, min(d_in, projection_dim))
    v_out = _leading_eigenvectors(c_out, min(d_out, projection_dim))
    rotated = [(a @ v_in, g @ v_out, w) for a, g, w in sides]
    best = None
    for split in SPLITS:
        k_in = min(split, d_in)
        k_out = min(d_out, projection_dim // k_in)
        if k_out < 1:
            break
        kept = sum(w * float(((gr[..., :k_out] @ gr[..., :k_out].transpose(1, 2))
                              * (ar[..., :k_in] @ ar[..., :k_in].transpose(1, 2))).sum())
                   for ar, gr, w in rotated)
        if best is None or kept > best[0]:
            best = (kept, k_in, k_out)
        if k_in == d_in:
            break
    _, k_in, k_out = best
    return (v_in[:, :k_in].contiguous() if k_in < d_in else None,
            v_out[:, :k_out].contiguous() if k_out < d_out else None)


def _leading_eigenvectors(c: torch.Tensor, k: int) -> torch.Tensor:
    """``[d, k]``: eigenvectors of the symmetric positive semi-definite ``c`` with the ``k``
    largest eigenvalues, largest first. A full ``eigh`` for small ``d``; above ``2k + 64``,
    subspace iteration from a seeded random start (four products with ``c``, then the exact
    eigenvectors within that subspace): a few ``d^2 k`` products instead of a ``d^3``
    decomposition, and exact for the leading directions that hold the energy."""
    d = c.shape[0]
    if d <= 2 * k + 64:
        return torch.linalg.eigh(c)[1].flip(1)[:, :k]
    q = torch.randn(d, k + 32, generator=torch.Generator().manual_seed(0), dtype=c.dtype)
    for _ in range(4):
        q = torch.linalg.qr(c @ q)[0]
    return (q @ torch.linalg.eigh(q.T @ c @ q)[1]).flip(1)[:, :k]


def fitted_dims(layers: Sequence[tuple[str, nn.Linear]], projections: dict[str, torch.Tensor]) -> dict:
    """``{name: [k_in, k_out]}``: each layer's vector shape (the bias counted on the input side)."""
    out = {}
    for name, module in layers:
        d_in = module.in_features + (module.bias is not None)
        k_in = projections[f"{name}.in"].shape[1] if f"{name}.in" in projections else d_in
        k_out = projections[f"{name}.out"].shape[1] if f"{name}.out" in projections else module.out_features
        out[name] = [k_in, k_out]
    return out


def vector_dim(layers: Sequence[tuple[str, nn.Linear]], projections: dict[str, torch.Tensor]) -> int:
    return sum(k_in * k_out for k_in, k_out in fitted_dims(layers, projections).values())


def layer_vectors(module: nn.Linear, a: torch.Tensor, g: torch.Tensor, p_in: torch.Tensor | None,
                  p_out: torch.Tensor | None) -> torch.Tensor:
    """``[N, k_out * k_in]``: each example's (projected) weight-and-bias gradient of one layer,
    ``P_out^T [G, b] P_in`` with ``[G, b]`` the ``d_out x (d_in + 1)`` gradient, never built."""
    d_in = module.in_features
    weight = ops.per_example_linear_grad(a, g, None if p_in is None else p_in[:d_in], p_out)
    if module.bias is not None:
        g_sum = g.sum(1).to(weight.dtype)
        bias = g_sum if p_out is None else g_sum @ p_out
        if p_in is None:
            weight = torch.cat([weight, bias[:, :, None]], dim=2)
        else:
            weight = weight + bias[:, :, None] * p_in[d_in]
    return weight.flatten(1)


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
    return vectors_from_factors(layers, projections, grads_lib.linear_factors(model, layers, inputs, targets, loss_fn,
                                                                             reduction))


def vectors_from_factors(layers: Sequence[tuple[str, nn.Linear]], projections: dict[str, torch.Tensor],
                         factors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``[N, vector_dim]`` float32 from each layer's factors ``(a [N, T, d_in], g [N, T, d_out])``."""
    parts = []
    for (name, module), (a, g) in zip(layers, factors):
        p_in, p_out = (projections[key].to(a.device, a.dtype) if key in projections else None
                       for key in (f"{name}.in", f"{name}.out"))
        parts.append(layer_vectors(module, a, g, p_in, p_out).float())
    return torch.cat(parts, dim=1)
