"""Quadrature rules on [0, 1] for path integrals, as plain functions returning ``(alphas, weights)``.

Every rule returns two float64 CPU tensors of the same length: the nodes ``alphas`` in [0, 1] and
the weights, which sum to 1, so every rule is exact when the integrand is constant (a linear
model) and Integrated Gradients then satisfies completeness exactly.

Captum's ``riemann_trapezoid`` differs: its nodes are ``linspace(0, 1, n)`` but every weight is
``1 / n`` (the two end weights halved), so its weights sum to ``(n - 1) / n`` and its integral is
short by a factor ``(n - 1) / n`` even on a linear model. Ours uses the composite trapezoid rule
on the same nodes (weights ``1 / (n - 1)``, ends halved), which is exact there.

``nested_levels`` gives the nested Gauss-Kronrod-Patterson family (1, 3, 7, 15, ... nodes) used by
``n_steps="auto"``: every level keeps all nodes of the previous one, so an adaptive integrator
reuses every gradient it has evaluated.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from saliency_fast.methods import _patterson_table


def _as_tensors(alphas, weights) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(alphas, dtype=torch.float64), torch.as_tensor(weights, dtype=torch.float64)


def riemann_left(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left Riemann sum: nodes ``k / n`` for k = 0 .. n-1, weights ``1 / n``."""
    return _as_tensors(np.arange(n) / n, np.full(n, 1.0 / n))


def riemann_right(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right Riemann sum: nodes ``k / n`` for k = 1 .. n, weights ``1 / n``."""
    return _as_tensors(np.arange(1, n + 1) / n, np.full(n, 1.0 / n))


def riemann_middle(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint rule: nodes ``(k + 1/2) / n``, weights ``1 / n``."""
    return _as_tensors((np.arange(n) + 0.5) / n, np.full(n, 1.0 / n))


def riemann_trapezoid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite trapezoid rule on ``linspace(0, 1, n)`` (n >= 2): weights ``1 / (n - 1)``, the two
    end weights halved, summing to 1 (captum's sum to ``(n - 1) / n``; see the module docstring)."""
    if n < 2:
        raise ValueError(f"n_steps must be at least 2 for riemann_trapezoid (it uses both end points), got {n}")
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] /= 2
    return _as_tensors(np.linspace(0.0, 1.0, n), weights)


def gausslegendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre rule with ``n`` nodes mapped from [-1, 1] to [0, 1] (exact for polynomials of
    degree ``2n - 1``)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return _as_tensors(0.5 * (nodes + 1.0), 0.5 * weights)


RULES = {
    "riemann_left": riemann_left,
    "riemann_right": riemann_right,
    "riemann_middle": riemann_middle,
    "riemann_trapezoid": riemann_trapezoid,
    "gausslegendre": gausslegendre,
}


def check_method(method) -> str:
    if not isinstance(method, str) or method not in RULES:
        raise ValueError(f"method must be one of {tuple(RULES)}, got {method!r}")
    return method


def nodes_and_weights(method: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alphas, weights)`` of the named rule with ``n_steps`` nodes, after validating both."""
    check_method(method)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        raise TypeError(f"n_steps must be an int or 'auto', got {type(n_steps).__name__}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    return RULES[method](n_steps)


@dataclasses.dataclass(frozen=True)
class NestedLevel:
    """One level of a nested rule. ``alphas`` / ``weights`` cover every node up to this level, the
    nodes of earlier levels first (in the order they were added), so ``alphas[:n_old]`` are the
    previous level's nodes and ``alphas[n_old:]`` the ones this level adds."""

    alphas: torch.Tensor
    weights: torch.Tensor
    n_old: int

    @property
    def n_nodes(self) -> int:
        return self.alphas.shape[0]


NESTED_SIZES = _patterson_table.LEVEL_SIZES


@functools.cache
def _all_nested_levels() -> tuple[NestedLevel, ...]:
    nodes = np.asarray(_patterson_table.NODES, dtype=np.float64)
    levels, n_old = [], 0
    for size, weights in zip(_patterson_table.LEVEL_SIZES, _patterson_table.WEIGHTS):
        alphas, w = _as_tensors(0.5 * (nodes[:size] + 1.0), 0.5 * np.asarray(weights, dtype=np.float64))
        levels.append(NestedLevel(alphas, w, n_old))
        n_old = size
    return tuple(levels)


def nested_levels(min_nodes: int = 1, max_nodes: int = NESTED_SIZES[-1]) -> tuple[NestedLevel, ...]:
    """The Gauss-Kronrod-Patterson levels (1, 3, 7, 15, 31, 63, 127, 255 nodes on [0, 1]) whose
    node count lies in ``[min_nodes, max_nodes]`` (``min_nodes`` above 255 means the last level).

    Level 0 is the midpoint rule, level 1 the 3-point Gauss-Legendre rule, and each later level adds
    ``n + 1`` nodes to the ``n`` it keeps, chosen (Patterson, 1968) so the rule is exact for
    polynomials of degree ``3n + 1``; all weights are positive. The first returned level has
    ``n_old == 0`` (all its nodes are new to the caller).
    """
    for name, value in (("min_steps", min_nodes), ("max_steps", max_nodes)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if min_nodes > max_nodes:
        raise ValueError(f"min_steps ({min_nodes}) must not exceed max_steps ({max_nodes})")
    levels = _all_nested_levels()
    first = min(i for i, size in enumerate(NESTED_SIZES) if size >= min(min_nodes, NESTED_SIZES[-1]))
    last = max(i for i, size in enumerate(NESTED_SIZES) if size <= max_nodes)
    if last < first:
        raise ValueError(
            f"no nested level has between min_steps={min_nodes} and max_steps={max_nodes} nodes; "
            f"the level sizes are {NESTED_SIZES}"
        )
    head, *rest = levels[first : last + 1]
    return (dataclasses.replace(head, n_old=0), *rest)
