"""Bad input gets a clear ValueError / TypeError naming the argument."""

from __future__ import annotations

import pytest
import torch

import saliency_fast
from tests.test_methods_models import TokenMLP, TwoInputModel

X = torch.randn(3, 4, 8)


@pytest.fixture
def ig():
    return saliency_fast.IntegratedGradients(TokenMLP())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(baselines=torch.zeros(3, 4, 7)), ValueError, r"baselines has shape \(3, 4, 7\)"),
        (dict(baselines=torch.zeros(2, 4, 8)), ValueError, "baselines has shape"),
        (dict(baselines=(0.0, 0.0)), ValueError, "one entry per input"),
        (dict(baselines="zero"), TypeError, "baselines must be a number"),
        (dict(baselines=torch.full((1, 4, 8), float("nan"))), ValueError, "baselines contains NaN"),
        (dict(target=3), ValueError, "target index 3 is out of range"),
        (dict(target=-4), ValueError, "out of range"),
        (dict(target=[0, 1, 3]), ValueError, "target holds indices out of range"),
        (dict(target=torch.tensor([0, 5, 1])), ValueError, "out of range"),
        (dict(target=[0, 1]), ValueError, "one entry per example"),
        (dict(target=(0, 1)), ValueError, "needs 2 output dims"),
        (dict(target=1.5), TypeError, "target must be"),
        (dict(target=torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer dtype"),
        (dict(target=None), ValueError, "one scalar per example"),
        (dict(n_steps=0), ValueError, "n_steps must be at least 1"),
        (dict(n_steps=-3), ValueError, "n_steps must be at least 1"),
        (dict(n_steps=2.5), TypeError, "n_steps must be an int"),
        (dict(n_steps="many"), ValueError, "n_steps must be a positive int or 'auto'"),
        (dict(n_steps=1, method="riemann_trapezoid"), ValueError, "at least 2 for riemann_trapezoid"),
        (dict(method="simpson"), ValueError, "method must be one of"),
        (dict(n_steps="auto", method="riemann_left"), ValueError, "method must be 'gausslegendre'"),
        (dict(n_steps="auto", rtol=-1.0), ValueError, "rtol must be a non-negative"),
        (dict(n_steps="auto", max_steps=0), ValueError, "max_steps must be at least 1"),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size must be at least 1"),
        (dict(internal_batch_size=2.0), TypeError, "internal_batch_size must be an int"),
        (dict(additional_forward_args=(torch.ones(2),)), ValueError, r"additional_forward_args\[0\]"),
    ],
)
def test_integrated_gradients_rejects_bad_arguments(ig, kwargs, error, match):
    kwargs.setdefault("target", 0)
    with pytest.raises(error, match=match):
        ig.attribute(X, **kwargs)


@pytest.mark.parametrize(
    "inputs,error,match",
    [
        (torch.randint(0, 5, (3, 4, 8)), TypeError, "inputs must have a floating dtype"),
        (X.numpy(), TypeError, "inputs must be a torch.Tensor"),
        (torch.tensor(1.0), ValueError, "batch dim"),
        ((X, torch.randn(2, 5)), ValueError, "share the batch size"),
        ((), ValueError, "non-empty tuple"),
    ],
)
def test_gradient_methods_reject_bad_inputs(inputs, error, match):
    for method in (saliency_fast.Saliency, saliency_fast.InputXGradient, saliency_fast.IntegratedGradients):
        with pytest.raises(error, match=match):
            method(TokenMLP()).attribute(inputs, target=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_rejected(bad):
    x = X.clone()
    x[1, 2, 3] = bad
    for method in (saliency_fast.Saliency(TokenMLP()), saliency_fast.IntegratedGradients(TokenMLP()),
                   saliency_fast.FeatureAblation(TokenMLP())):
        with pytest.raises(ValueError, match="inputs contains NaN or inf"):
            method.attribute(x, target=0)


def test_non_finite_gradients_are_rejected():
    def forward(x):
        return (x.abs().sqrt() * 0 + x.sqrt()).flatten(1).sum(1)  # sqrt of negatives: NaN

    x = -torch.rand(2, 3) - 0.1
    with pytest.raises(ValueError, match="gradient w.r.t. inputs contains NaN or inf"):
        saliency_fast.Saliency(forward).attribute(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        saliency_fast.IntegratedGradients(forward).attribute(x, baselines=-1.0, n_steps=3)


def test_forward_output_must_be_a_tensor():
    model = TokenMLP()
    with pytest.raises(TypeError, match="forward_func must return a tensor"):
        saliency_fast.Saliency(lambda x: {"logits": model(x)}).attribute(X, target=0)
    with pytest.raises(TypeError, match="forward_func must be callable"):
        saliency_fast.IntegratedGradients("model")


def test_saliency_abs_must_be_a_bool():
    with pytest.raises(TypeError, match="abs must be a bool"):
        saliency_fast.Saliency(TokenMLP()).attribute(X, target=0, abs="yes")


def test_autocast_dtype_must_be_half():
    with pytest.raises(ValueError, match="dtype must be None"):
        saliency_fast.IntegratedGradients(TokenMLP(), dtype=torch.float64)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(nt_type="smooth"), ValueError, "nt_type must be one of"),
        (dict(nt_samples=0), ValueError, "nt_samples must be at least 1"),
        (dict(nt_samples_batch_size=0), ValueError, "nt_samples_batch_size must be at least 1"),
        (dict(stdevs=-0.1), ValueError, "stdevs must be non-negative"),
        (dict(stdevs=(0.1, 0.2)), ValueError, "one per input tensor"),
        (dict(stdevs="big"), TypeError, "stdevs must be numbers"),
        (dict(generator="seed"), TypeError, "generator must be"),
        (dict(stdevs_relative=1), TypeError, "stdevs_relative must be a bool"),
    ],
)
def test_noise_tunnel_rejects_bad_arguments(kwargs, error, match):
    nt = saliency_fast.NoiseTunnel(saliency_fast.Saliency(TokenMLP()))
    with pytest.raises(error, match=match):
        nt.attribute(X, target=0, **kwargs)
    with pytest.raises(TypeError, match="attribution_method must be"):
        saliency_fast.NoiseTunnel(TokenMLP())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(feature_mask=torch.zeros(3, 4, 7, dtype=torch.long)), ValueError, "does not broadcast"),
        (dict(feature_mask=torch.zeros(1, 4, 8)), TypeError, "integer feature ids"),
        (dict(feature_mask=(torch.zeros(1, 4, 8, dtype=torch.long),) * 2), ValueError, "one tensor per input"),
        (dict(perturbations_per_eval=0), ValueError, "perturbations_per_eval must be at least 1"),
        (dict(target=7), ValueError, "out of range"),
        (dict(baselines=torch.zeros(5)), ValueError, "baselines has shape"),
    ],
)
def test_feature_ablation_rejects_bad_arguments(kwargs, error, match):
    kwargs.setdefault("target", 0)
    with pytest.raises(error, match=match):
        saliency_fast.FeatureAblation(TokenMLP()).attribute(X, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sliding_window_shapes=(2,)), r"sliding_window_shapes\[0\] must be a tuple of 2 ints"),
        (dict(sliding_window_shapes=(5, 8)), "must lie between 1 and the input's sizes"),
        (dict(sliding_window_shapes=(1, 8), strides=(2, 1)), "exceeds sliding_window_shapes"),
        (dict(sliding_window_shapes=(1, 8), strides=0), "strides.* must be a positive int"),
        (dict(sliding_window_shapes=((1, 8), (1, 8))), "one tuple per input"),
    ],
)
def test_occlusion_rejects_bad_windows(kwargs, match):
    with pytest.raises(ValueError, match=match):
        saliency_fast.Occlusion(TokenMLP()).attribute(X, target=0, **kwargs)


def test_perturbation_rejects_batched_copies_of_an_aggregated_output():
    model = TwoInputModel()
    with pytest.raises(ValueError, match="perturbations_per_eval must be 1"):
        saliency_fast.FeatureAblation(lambda x, y: model(x, y).sum()).attribute(
            (X, torch.randn(3, 5)), perturbations_per_eval=2
        )


@pytest.mark.parametrize("call, names", [
    (lambda: saliency_fast.Occlusion(TokenMLP()).attribute(X, sliding_window_shapes=(1, 8), strides=(1, 2, 3)),
     "strides"),
    (lambda: saliency_fast.Occlusion(TokenMLP()).attribute(X, sliding_window_shapes=(1,)), "sliding_window_shapes"),
    (lambda: saliency_fast.Saliency(TokenMLP()).attribute(X, target=(9, 9)), "target"),
    (lambda: saliency_fast.IntegratedGradients(lambda x: x.sum(-1)).attribute(X), "target"),
])
def test_where_captum_asserts_we_raise_a_value_error_that_is_also_an_assertion_error(call, names):
    with pytest.raises(ValueError, match=names) as raised:
        call()
    assert isinstance(raised.value, AssertionError)  # captum users' `except AssertionError` still works


def test_attribute_future_is_captums():
    with pytest.raises(NotImplementedError):
        saliency_fast.Saliency(TokenMLP()).attribute_future(X)
    with pytest.raises(NotImplementedError):
        saliency_fast.Occlusion(TokenMLP()).attribute_future(X, sliding_window_shapes=(1, 8))
    with pytest.raises(ValueError, match="attribute_future"):  # a forward that returns futures needs attribute_future
        saliency_fast.FeatureAblation(lambda x: torch.futures.Future()).attribute(X)
