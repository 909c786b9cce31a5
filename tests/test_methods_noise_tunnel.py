"""NoiseTunnel beyond captum parity: seeded repeatability, relative stdevs, zero noise, and the
statistics it estimates."""

from __future__ import annotations

import pytest
import torch

import saliency_fast
from tests.test_methods_models import TokenMLP, relative_difference


@pytest.fixture
def case():
    return TokenMLP(), torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))


def test_a_seed_makes_results_repeatable_and_independent_of_the_global_rng(case):
    model, x = case
    nt = saliency_fast.NoiseTunnel(saliency_fast.Saliency(model))
    first = nt.attribute(x, target=1, nt_samples=4, stdevs=0.2, generator=123)
    torch.manual_seed(999)
    second = nt.attribute(x, target=1, nt_samples=4, stdevs=0.2, generator=123)
    third = nt.attribute(x, target=1, nt_samples=4, stdevs=0.2, generator=124)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_zero_noise_gives_the_wrapped_method_statistics(case, nt_type):
    model, x = case
    plain = saliency_fast.InputXGradient(model).attribute(x, target=2)
    out = saliency_fast.NoiseTunnel(saliency_fast.InputXGradient(model)).attribute(
        x, nt_type=nt_type, nt_samples=3, stdevs=0.0, target=2
    )
    expected = {"smoothgrad": plain, "smoothgrad_sq": plain**2, "vargrad": torch.zeros_like(plain)}[nt_type]
    assert torch.allclose(out, expected, atol=1e-6)


def test_relative_stdevs_scale_with_each_example(case):
    """With stdevs_relative the noise of an example scaled by c is c times larger, so a
    scale-invariant summary (vargrad of a linear-in-x method / c^2) is unchanged."""
    _, x = case
    weights = torch.randn(4, 8)
    model = lambda v: (v * weights).flatten(1).sum(1)  # noqa: E731 - gradients are constant: saliency noise-free
    scaled = x * torch.tensor([1.0, 10.0, 0.1]).view(-1, 1, 1)
    nt = saliency_fast.NoiseTunnel(saliency_fast.InputXGradient(model))
    var = nt.attribute(scaled, nt_type="vargrad", nt_samples=400, stdevs=0.1, stdevs_relative=True, generator=0)
    # InputXGradient of a linear model = x * w, noise sd = 0.1 * std(example): vargrad ~ (0.1 sd w)^2
    for i in range(3):
        expected = (0.1 * scaled[i].std() * weights) ** 2
        assert relative_difference(var[i].mean(), expected.mean()) < 0.2


def test_smoothgrad_estimates_the_mean_over_the_noise(case):
    model, x = case
    nt = saliency_fast.NoiseTunnel(saliency_fast.Saliency(model))
    many = nt.attribute(x, target=0, abs=False, nt_samples=256, nt_samples_batch_size=64, stdevs=0.3, generator=1)
    other = nt.attribute(x, target=0, abs=False, nt_samples=256, nt_samples_batch_size=100, stdevs=0.3, generator=2)
    # two independent estimates of the same expectation agree far better than either is to no noise
    plain = saliency_fast.Saliency(model).attribute(x, target=0, abs=False)
    assert relative_difference(many, other) < 0.5 * relative_difference(many, plain)


def test_noise_tunnel_draws_baselines_from_a_distribution():
    """IG of a linear model is (x - b) * w, so averaged over baselines drawn uniformly from a pool it
    approaches (x - mean(pool)) * w; each noisy copy gets its own delta."""
    weights = torch.randn(4, 8)
    model = lambda v: (v * weights).flatten(1).sum(1)  # noqa: E731
    x = torch.randn(3, 4, 8)
    pool = torch.stack([torch.zeros(4, 8), torch.full((4, 8), 4.0)])
    nt = saliency_fast.NoiseTunnel(saliency_fast.IntegratedGradients(model))
    out, delta = nt.attribute(
        x, nt_samples=400, nt_samples_batch_size=100, stdevs=0.0, baselines=pool, draw_baseline_from_distrib=True,
        n_steps=2, return_convergence_delta=True, generator=3,
    )
    assert delta.shape == (1200,) and float(delta.abs().max()) < 1e-4
    assert relative_difference(out, (x - 2) * weights) < 0.05
    assert relative_difference(out, x * weights) > 0.3 and relative_difference(out, (x - 4) * weights) > 0.3
