"""Integrated Gradients beyond captum parity: exactness on linear models (where captum's trapezoid
is short by 1/n), adaptive ``n_steps="auto"``, chunking, frozen parameters, bf16 mode."""

from __future__ import annotations

import weakref

import captum.attr
import pytest
import torch
from torch import nn

import saliency_fast
from saliency_fast.methods import integrated_gradients as ig_module
from saliency_fast.methods import lean_backward
from saliency_fast.methods import quadrature
from tests.test_methods_models import BertLogits, TokenMLP, relative_difference

RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6 * 4, 3)

    def forward(self, x):
        return self.proj(x.flatten(1))


def _linear_case():
    gen = torch.Generator().manual_seed(2)
    return Linear(), torch.randn(5, 6, 4, generator=gen), torch.randn(5, 6, 4, generator=gen)


@pytest.mark.parametrize("method", RULES)
@pytest.mark.parametrize("n_steps", [2, 7, 50])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_completeness_is_exact_on_a_linear_model(method, n_steps, dtype, tol):
    """Every rule's weights sum to 1, so on a linear model the attributions add up to
    F(x) - F(b) up to rounding (tolerance relative to the size of the outputs)."""
    model, x, baselines = _linear_case()
    model, x, baselines = model.to(dtype), x.to(dtype), baselines.to(dtype)
    attr, delta = saliency_fast.IntegratedGradients(model).attribute(
        x, baselines=baselines, target=1, n_steps=n_steps, method=method, return_convergence_delta=True
    )
    with torch.no_grad():
        end, start = model(x)[:, 1], model(baselines)[:, 1]
    scale = tol * float(torch.maximum(end.abs(), start.abs()).max())
    assert torch.allclose(attr.flatten(1).sum(1), end - start, rtol=0, atol=scale)
    assert float(delta.abs().max()) <= scale


@pytest.mark.parametrize("n_steps", [2, 5, 20])
def test_captums_trapezoid_is_short_by_one_over_n_and_ours_is_not(n_steps):
    """captum's riemann_trapezoid weights sum to (n-1)/n: on a linear model its total is (n-1)/n of
    F(x) - F(b). Ours (composite trapezoid, weights summing to 1) is exact."""
    model, x, baselines = _linear_case()
    args = dict(baselines=baselines, target=2, n_steps=n_steps, method="riemann_trapezoid")
    theirs = captum.attr.IntegratedGradients(model).attribute(x, **args)
    ours = saliency_fast.IntegratedGradients(model).attribute(x, **args)
    change = (model(x)[:, 2] - model(baselines)[:, 2]).detach()
    scale = 1e-6 * float(change.abs().max())
    assert torch.allclose(theirs.flatten(1).sum(1), change * (n_steps - 1) / n_steps, atol=scale)
    assert torch.allclose(ours.flatten(1).sum(1), change, atol=scale)
    assert torch.allclose(ours * (n_steps - 1) / n_steps, theirs, atol=1e-6)


def test_fixed_rule_results_do_not_depend_on_the_chunk_size():
    model, x, baselines = _linear_case()
    model = TokenMLP(dim=4)
    ig = saliency_fast.IntegratedGradients(model)
    reference = ig.attribute(x, baselines=baselines, target=0, n_steps=9)
    for internal_batch_size in (5, 7, 20, 1000):
        chunked = ig.attribute(x, baselines=baselines, target=0, n_steps=9, internal_batch_size=internal_batch_size,
                               show_progress=internal_batch_size == 7)
        assert relative_difference(chunked, reference) <= 1e-6


class Recorder(nn.Module):
    """Wraps a model; records the rows of each call, whether autograd/inference mode were on, and
    checks that the previous call's output (and so its graph) is gone by the next call."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.rows, self.inference, self.leaks = [], [], 0
        self._last = None

    def forward(self, *args):
        if self._last is not None and self._last() is not None:
            self.leaks += 1
        out = self.model(*args)
        self.rows.append(args[0].shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        if out.requires_grad:
            self._last = weakref.ref(out)
        return out


def test_chunks_respect_internal_batch_size_and_free_their_graph():
    model = Recorder(TokenMLP())
    x = torch.randn(4, 5, 8)
    saliency_fast.IntegratedGradients(model).attribute(x, target=1, n_steps=10, internal_batch_size=12)
    assert model.rows == [12, 12, 12, 4] and model.leaks == 0
    assert not any(p.requires_grad is False for p in model.parameters())


def test_parameters_are_frozen_during_attribution_and_restored_after():
    model = TokenMLP()
    seen = []
    original = model.forward

    def forward(x):
        seen.append([p.requires_grad for p in model.parameters()])
        return original(x)

    model.forward = forward  # a bound-method-like callable on the module: freeze via the module itself
    saliency_fast.IntegratedGradients(model).attribute(torch.randn(2, 3, 8), target=0, n_steps=4)
    assert seen and not any(any(flags) for flags in seen)
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters()), "no weight gradients may be computed"


def test_deltas_use_inference_mode_forwards():
    model = Recorder(TokenMLP())
    x = torch.randn(3, 5, 8)
    saliency_fast.IntegratedGradients(model).attribute(x, target=1, n_steps=4, return_convergence_delta=True)
    assert model.inference == [False, True, True]


# ------------------------------------------------------------------------------------------ auto


def _auto_case(seed: int):
    """A tiny BERT with larger-than-default weights (a curved path integrand) and examples of
    different scales: some converge at once, others need more points."""
    model = BertLogits(seed=seed, initializer_range=0.3)
    x = model.embed(n=6, length=6, seed=seed)
    x = x * torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 6.0]).view(-1, 1, 1)
    return model, x


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_reaches_its_rtol_and_matches_the_fixed_level_rule(seed):
    model, x = _auto_case(seed)
    ig = saliency_fast.IntegratedGradients(model)
    rtol = 0.01
    attr, delta = ig.attribute(x, target=0, n_steps="auto", rtol=rtol, return_convergence_delta=True)
    change = (model(x) - model(torch.zeros_like(x)))[:, 0]
    assert torch.all(delta.abs() <= rtol * change.abs())
    assert torch.equal(delta, ig.last_convergence_delta)
    assert set(ig.last_n_steps.tolist()) <= set(quadrature.NESTED_SIZES)
    assert len(set(ig.last_n_steps.tolist())) > 1, "the case should need different levels per example"
    # each example's result is exactly the Patterson rule of the level it stopped at
    levels = {level.n_nodes: level for level in quadrature.nested_levels(1, 255)}
    for i, n in enumerate(ig.last_n_steps.tolist()):
        level = levels[n]
        fixed = ig_module.integrate_path(
            ig_module.gradient_function(model, saliency_fast.methods._common.Target.parse(0, 1), None),
            (x[i : i + 1],), (torch.zeros_like(x[i : i + 1]),), level.alphas, level.weights,
        )[0]
        assert relative_difference(attr[i : i + 1], fixed) <= 1e-5


def test_auto_uses_fewer_gradient_evaluations_than_a_fixed_rule_for_the_same_error():
    """A fixed rule must use one n_steps for the whole batch, so it pays the hardest example's
    price for every example; auto stops each example as soon as it is accurate enough."""
    model, x = _auto_case(0)
    rtol = 0.01
    ig = saliency_fast.IntegratedGradients(model)
    ig.attribute(x, target=0, n_steps="auto", rtol=rtol)
    auto_evaluations = int(ig.last_n_steps.sum())
    change = (model(x) - model(torch.zeros_like(x)))[:, 0].detach()
    # every n_steps a fixed rule could use at no more cost leaves some example above rtol; all the
    # Gauss-Legendre rules n = 1 .. auto_evaluations / N go through one chunked pass, one buffer each
    rules = [quadrature.gausslegendre(n) for n in range(1, auto_evaluations // x.shape[0] + 1)]
    alphas = torch.cat([a for a, _ in rules])
    offsets = torch.tensor([0] + [len(a) for a, _ in rules]).cumsum(0)
    weight_rows = [torch.zeros_like(alphas).index_copy(0, torch.arange(o, o + len(w)), w)
                   for o, (_, w) in zip(offsets.tolist(), rules)]
    buffers = [ig_module.new_accumulators((x,)) for _ in rules]
    gradient_fn = ig_module.gradient_function(model, saliency_fast.methods._common.Target.parse(0, len(x)), None)
    ig_module.accumulate_path(gradient_fn, (x,), (torch.zeros_like(x),), alphas, weight_rows, buffers, 64)
    for n, (buffer,) in enumerate(buffers, 1):
        delta = buffer.flatten(1).sum(1) - change
        assert not torch.all(delta.abs() <= rtol * change.abs()), n
    # the one-pass errors are those of the fixed rule (spot check)
    _, delta = ig.attribute(x, target=0, n_steps=len(rules), return_convergence_delta=True)
    assert torch.allclose(buffers[-1][0].flatten(1).sum(1) - change, delta, atol=1e-5 * float(change.abs().max()))


def test_auto_warns_when_max_steps_is_too_small_and_respects_atol():
    model, x = _auto_case(0)
    ig = saliency_fast.IntegratedGradients(model)
    with pytest.warns(UserWarning, match="did not reach"):
        ig.attribute(x, target=0, n_steps="auto", rtol=1e-9, max_steps=7)
    assert ig.last_n_steps.max() == 7
    ig.attribute(x, target=0, n_steps="auto", atol=1e9, min_steps=1)
    assert torch.all(ig.last_n_steps == 1)


def test_auto_on_a_linear_model_stops_at_the_first_level():
    model, x, baselines = _linear_case()
    ig = saliency_fast.IntegratedGradients(model)
    attr, delta = ig.attribute(x, baselines=baselines, target=1, n_steps="auto", rtol=1e-5,
                               return_convergence_delta=True)
    assert torch.all(ig.last_n_steps == 3)
    change = model(x)[:, 1] - model(baselines)[:, 1]
    assert float(delta.abs().max()) <= 1e-5 * float(change.abs().min())


def test_auto_with_per_example_targets_and_args():
    """Finished examples leave the batch together with their target and additional args."""
    model, x = _auto_case(1)
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    mask[2, -2:] = 0
    target = [0, 1, 2, 0, 1, 2]
    ig = saliency_fast.IntegratedGradients(model)
    attr = ig.attribute(x, target=target, additional_forward_args=(mask,), n_steps="auto", internal_batch_size=8)
    steps_used = ig.last_n_steps.tolist()
    assert len(set(steps_used)) > 1
    for i in sorted({steps: i for i, steps in enumerate(steps_used)}.values()):  # one example per level
        steps = steps_used[i]
        alone = ig.attribute(x[i : i + 1], target=target[i], additional_forward_args=(mask[i : i + 1],), n_steps="auto")
        assert int(ig.last_n_steps[0]) == steps
        assert relative_difference(attr[i : i + 1], alone) <= 1e-5


def test_multiply_by_inputs_false_matches_captum():
    model, x = TokenMLP(), torch.randn(3, 5, 8)
    ours = saliency_fast.IntegratedGradients(model, multiply_by_inputs=False).attribute(x, target=2, n_steps=8)
    theirs = captum.attr.IntegratedGradients(model, multiply_by_inputs=False).attribute(x, target=2, n_steps=8)
    assert relative_difference(ours, theirs) <= 1e-5


def test_float64_inputs_stay_float64_and_match_captum():
    model = TokenMLP().double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    ours = saliency_fast.IntegratedGradients(model).attribute(x, target=2, n_steps=8)
    theirs = captum.attr.IntegratedGradients(model).attribute(x, target=2, n_steps=8)
    assert ours.dtype == torch.float64
    assert relative_difference(ours, theirs) <= 1e-7  # captum rounds its step weights to float32


def test_bfloat16_mode_is_close_to_float32():
    model = BertLogits()
    x = model.embed()
    full = saliency_fast.IntegratedGradients(model).attribute(x, target=1, n_steps=16)
    half = saliency_fast.IntegratedGradients(model, dtype=torch.bfloat16).attribute(x, target=1, n_steps=16)
    assert half.dtype == torch.float32
    assert relative_difference(half, full) <= 0.05


def test_bfloat16_mode_uses_eager_attention_on_cpu_for_short_sequences_only():
    seen = []
    model = BertLogits()

    def forward(embeds):
        mode = torch.overrides._get_current_function_mode()
        seen.append(isinstance(mode, lean_backward._GradientPassMode) and mode.eager)
        return model(embeds) if embeds.shape[1] <= 128 else embeds.sum((1, 2)).unsqueeze(1)

    x = model.embed(n=2, length=8)
    saliency_fast.Saliency(forward).attribute(x, target=0)
    saliency_fast.Saliency(forward, dtype=torch.bfloat16).attribute(x, target=0)
    long = torch.randn(1, 1100, x.shape[-1]) * 0.05  # rows * L * L above the bound
    saliency_fast.Saliency(forward, dtype=torch.bfloat16).attribute(long, target=0)
    assert seen == [False, True, False]
    assert torch.overrides._get_current_function_mode() is None
