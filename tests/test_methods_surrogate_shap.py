"""Lime, KernelShap, GradientShap, DeepLift, DeepLiftShap and LayerGradCam against captum 0.9 on the
same models, inputs and seeds (float32): batches, tuple inputs, per-example targets, additional
forward args; and the work our Lime/KernelShap save (repeated subsets evaluated once)."""

from __future__ import annotations

import captum.attr
import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from torch import nn

import saliency_fast
import saliency_fast.methods
from tests.test_methods_models import BertLogits, TokenMLP, TwoInputModel, relative_difference

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor .* did not already require gradients", "ignore:You are providing multiple inputs",
    "ignore:Setting forward, backward hooks",
)


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@pytest.fixture(scope="module")
def bert():
    return BertLogits()


def _token_mask(x: torch.Tensor) -> torch.Tensor:
    """One feature per token, per example."""
    return torch.arange(x.shape[1]).view(1, -1, 1).expand(x.shape[0], -1, x.shape[2])


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
@pytest.mark.parametrize("per_eval", [1, 7])
def test_surrogates_match_captum_on_bert(bert, method, per_eval):
    x = bert.embed()
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    mask[1, -2:] = 0
    kwargs = dict(
        baselines=x[:1] * 0.5, target=[1, 0, 1], additional_forward_args=(mask,), feature_mask=_token_mask(x),
        n_samples=60, perturbations_per_eval=per_eval,
    )
    def forward(embeds, attention_mask):  # logits of a random BERT move little: scaled for Lasso
        return bert(embeds, attention_mask) * 100

    _seeded()
    ours = getattr(saliency_fast, method)(forward).attribute(x, **kwargs)
    _seeded()
    theirs = getattr(captum.attr, method)(forward).attribute(x, **kwargs)
    # the same samples; the outputs differ in float32 rounding (other batch compositions), which
    # sklearn's Lasso (stopping at tol=1e-4) and captum's float32 least squares carry into the fit
    assert relative_difference(ours, theirs) <= 1e-3
    _seeded()
    coefs = getattr(saliency_fast, method)(forward).attribute(x, return_input_shape=False, **kwargs)
    assert coefs.shape == (3, x.shape[1])
    assert torch.equal(coefs[:, 2], ours[:, 2, 0])


def test_lime_tuple_inputs_custom_kernel_match_captum():
    model = TwoInputModel()
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    masks = (torch.arange(4).view(1, 4, 1).expand(1, 4, 8), torch.tensor([[4, 4, 5, 5, 6]]))
    kernel = captum.attr._core.lime.get_exp_kernel_similarity_function("euclidean", 5.0)
    kwargs = dict(target=(1, 2), feature_mask=masks, n_samples=40, perturbations_per_eval=3)
    _seeded(3)
    ours = saliency_fast.Lime(model, SkLearnLasso(alpha=0.001), kernel).attribute((x, y), **kwargs)
    _seeded(3)
    theirs = captum.attr.Lime(model, SkLearnLasso(alpha=0.001), kernel).attribute((x, y), **kwargs)
    for a, b in zip(ours, theirs):
        assert relative_difference(a, b) <= 1e-4


def test_kernel_shap_evaluates_each_subset_once():
    model = TokenMLP()
    calls = []
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))

    def forward(inputs):
        calls.append(inputs.shape[0])
        return model(inputs)

    _seeded()
    saliency_fast.KernelShap(forward).attribute(x, target=0, feature_mask=_token_mask(x), n_samples=200,
                                                perturbations_per_eval=50)
    # 5 features: at most 2**5 distinct subsets per example, plus the batch test forward
    assert sum(calls) <= 2 * 32 + 2
    assert max(calls) <= 50 * 2


@pytest.mark.parametrize("stdevs", [0.0, 0.1])
def test_gradient_shap_matches_captum(bert, stdevs):
    x = bert.embed()
    references = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(4)) * 0.1
    kwargs = dict(n_samples=4, stdevs=stdevs, target=1, return_convergence_delta=True)
    _seeded(1)
    ours, ours_delta = saliency_fast.GradientShap(bert).attribute(x, references, **kwargs)
    _seeded(1)
    theirs, their_delta = captum.attr.GradientShap(bert).attribute(x, references, **kwargs)
    assert relative_difference(ours, theirs) <= 1e-5
    assert ours_delta.shape == their_delta.shape == (x.shape[0] * 4,)
    assert torch.allclose(ours_delta, their_delta, atol=1e-5)


class _PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(12, 4)
        self.act = nn.Sigmoid()
        self.mix = nn.Linear(4, 4)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        h = self.pool(self.relu(self.conv(x))).flatten(1)
        return self.softmax(self.mix(self.act(self.fc(h))))


@pytest.mark.parametrize("model_name", ["mlp", "pool"])
@pytest.mark.parametrize("multiply", [True, False])
def test_deeplift_matches_captum(model_name, multiply):
    if model_name == "mlp":
        model = TokenMLP()
        x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
        baselines, target = x[:1] * 0.2, [0, 2, 1]
    else:
        model = _PoolNet()
        x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
        baselines, target = torch.zeros(1, 1, 6, 6), 3
    ours, ours_delta = saliency_fast.DeepLift(model, multiply).attribute(
        x, baselines, target=target, return_convergence_delta=True)
    theirs, their_delta = captum.attr.DeepLift(model, multiply).attribute(
        x, baselines, target=target, return_convergence_delta=True)
    assert relative_difference(ours, theirs) <= 1e-5
    if multiply:
        assert torch.allclose(ours_delta, their_delta, atol=1e-5)


def test_deeplift_shap_matches_captum():
    model = TokenMLP()
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    references = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(1))
    ours, ours_delta = saliency_fast.DeepLiftShap(model).attribute(x, references, target=1,
                                                                   return_convergence_delta=True)
    theirs, their_delta = captum.attr.DeepLiftShap(model).attribute(x, references, target=1,
                                                                    return_convergence_delta=True)
    assert relative_difference(ours, theirs) <= 1e-5
    assert ours_delta.shape == their_delta.shape == (6,)
    assert torch.allclose(ours_delta, their_delta, atol=1e-5)


def test_deeplift_rescale_on_gelu_is_complete():
    """captum leaves GELU to its gradient; our rescale rule makes the attributions sum to the change
    of the output (completeness), which the plain gradient does not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 2))
    x, b = torch.randn(4, 6), torch.zeros(1, 6)
    _, delta = saliency_fast.DeepLift(model).attribute(x, b, target=0, return_convergence_delta=True)
    _, their_delta = captum.attr.DeepLift(model).attribute(x, b, target=0, return_convergence_delta=True)
    assert delta.abs().max() < 1e-5
    assert their_delta.abs().max() > 1e-3


def test_deeplift_adjacent_activations_stay_complete():
    """Two rule modules in a row (ReLU then Tanh): each gets its rule and the attributions sum to the
    output change; captum's hooks mis-chain there (a deliberate difference, see README)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(36, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(2, 36)
    _, delta = saliency_fast.DeepLift(model).attribute(x, torch.zeros(1, 36), target=2, return_convergence_delta=True)
    _, theirs = captum.attr.DeepLift(model).attribute(x, torch.zeros(1, 36), target=2, return_convergence_delta=True)
    assert delta.abs().max() < 1e-6
    assert theirs.abs().max() > 1e-2


@pytest.mark.parametrize("relu", [False, True])
def test_layer_grad_cam_matches_captum(relu):
    model = _PoolNet()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    ours = saliency_fast.LayerGradCam(model, model.conv).attribute(x, target=[1, 2], relu_attributions=relu)
    theirs = captum.attr.LayerGradCam(model, model.conv).attribute(x, target=[1, 2], relu_attributions=relu)
    assert relative_difference(ours, theirs) <= 1e-5


def test_bad_arguments_are_named():
    model = TokenMLP()
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="n_samples"):
        saliency_fast.Lime(model).attribute(x, target=0, n_samples=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        saliency_fast.DeepLift(lambda t: t)
    with pytest.raises(ValueError, match="baselines"):  # an AssertionError too, as captum's
        saliency_fast.GradientShap(model).attribute(x, baselines=0.0, target=0)
    with pytest.raises(ValueError, match="distance_mode"):
        saliency_fast.methods.get_exp_kernel_similarity_function("manhattan")
