"""Quadrature rules: weights sum to one, degrees of exactness, and the nested Patterson table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saliency_fast.methods import quadrature


@pytest.mark.parametrize("method", list(quadrature.RULES))
@pytest.mark.parametrize("n", [2, 3, 10, 50])
def test_rules_have_nodes_in_the_unit_interval_and_weights_summing_to_one(method, n):
    alphas, weights = quadrature.nodes_and_weights(method, n)
    assert alphas.dtype == weights.dtype == torch.float64 and alphas.shape == weights.shape == (n,)
    assert float(alphas.min()) >= 0.0 and float(alphas.max()) <= 1.0
    assert abs(float(weights.sum()) - 1.0) < 1e-14
    assert bool((weights > 0).all())


def _integrates(alphas, weights, degree) -> bool:
    """Whether the rule integrates x**degree over [0, 1] exactly (to 1e-12)."""
    return abs(float((weights * alphas**degree).sum()) - 1.0 / (degree + 1)) < 1e-12


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_gauss_legendre_is_exact_to_degree_2n_minus_1(n):
    alphas, weights = quadrature.gausslegendre(n)
    assert all(_integrates(alphas, weights, d) for d in range(2 * n))
    if n <= 5:  # the error at degree 2n is below the 1e-12 threshold for larger n
        assert not _integrates(alphas, weights, 2 * n)


def test_trapezoid_is_the_composite_rule_and_exact_on_lines():
    alphas, weights = quadrature.riemann_trapezoid(5)
    assert torch.equal(alphas, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert torch.allclose(weights, torch.tensor([0.125, 0.25, 0.25, 0.25, 0.125], dtype=torch.float64))
    assert _integrates(alphas, weights, 1)


def test_midpoint_is_exact_on_lines_and_left_right_are_not():
    for method, exact in [("riemann_middle", True), ("riemann_left", False), ("riemann_right", False)]:
        alphas, weights = quadrature.nodes_and_weights(method, 4)
        assert _integrates(alphas, weights, 1) is exact


def test_nested_levels_are_nested_positive_and_exact_to_degree_3n_plus_1():
    levels = quadrature.nested_levels(1, 255)
    assert [level.n_nodes for level in levels] == [1, 3, 7, 15, 31, 63, 127, 255]
    for previous, level in zip(levels, levels[1:]):
        assert level.n_old == previous.n_nodes
        assert torch.equal(level.alphas[: level.n_old], previous.alphas)
    for level in levels:
        n_old = (level.n_nodes - 1) // 2
        alphas, weights = level.alphas, level.weights
        assert bool((weights > 0).all()) and abs(float(weights.sum()) - 1.0) < 1e-13
        assert len(set(alphas.tolist())) == level.n_nodes and 0 < float(alphas.min()) and float(alphas.max()) < 1
        # exactness through Legendre polynomials on [-1, 1] (monomials would lose digits)
        x = (2 * alphas - 1).numpy()
        degree = 3 * n_old + 1 if level.n_nodes > 1 else 1
        for k in range(1, degree + 1):
            value = float((weights.numpy() * np.polynomial.legendre.Legendre.basis(k)(x)).sum())
            assert abs(value) < 1e-12, (level.n_nodes, k, value)


def test_nested_levels_start_with_gauss_legendre_and_the_kronrod_extension():
    levels = quadrature.nested_levels(1, 7)
    for level, n in zip(levels[:2], (1, 3)):
        alphas, weights = quadrature.gausslegendre(n)
        order = torch.argsort(level.alphas)
        assert torch.allclose(level.alphas[order], alphas, atol=1e-15)
        assert torch.allclose(level.weights[order], weights, atol=1e-15)
    # Patterson's 7-point extension of the 3-point Gauss rule (published nodes on [-1, 1])
    known = [0.0, 0.43424374934680255800, 0.77459666924148337704, 0.96049126870802028342]
    x = sorted(abs(v) for v in (2 * levels[2].alphas - 1).tolist())
    assert np.allclose(sorted(set(np.round(x, 14))), known, atol=1e-14)


def test_nested_levels_choose_sizes_within_the_bounds():
    assert [level.n_nodes for level in quadrature.nested_levels(3, 127)] == [3, 7, 15, 31, 63, 127]
    assert [level.n_nodes for level in quadrature.nested_levels(4, 20)] == [7, 15]
    first = quadrature.nested_levels(5, 20)[0]
    assert first.n_old == 0  # the caller has evaluated none of its nodes yet
    with pytest.raises(ValueError, match="no nested level"):
        quadrature.nested_levels(70, 100)
    with pytest.raises(ValueError, match="max_steps"):
        quadrature.nested_levels(1, 0)
    with pytest.raises(ValueError, match="must not exceed"):
        quadrature.nested_levels(9, 3)
