"""Every method against captum 0.9 on the same small models and arguments (float32, max relative
difference <= 1e-5 over each output), including tuple inputs, every target form, additional
forward args and internal batching."""

from __future__ import annotations

import captum.attr
import pytest
import torch

import saliency_fast
from tests.test_methods_models import BertLogits, TokenMLP, TwoInputModel, relative_difference

TOL = 1e-5

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")


@pytest.fixture(scope="module")
def bert():
    return BertLogits()


def _mlp_case():
    model = TokenMLP()
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(3))
    return model, x, {"target": [0, 2, 1, 2]}


def _bert_case(bert):
    x = bert.embed()
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    mask[1, -2:] = 0
    return bert, x, {"target": 1, "additional_forward_args": (mask,)}


@pytest.fixture(params=["mlp", "bert"])
def case(request, bert):
    return _mlp_case() if request.param == "mlp" else _bert_case(bert)


@pytest.mark.parametrize("abs_", [True, False])
def test_saliency_matches_captum(case, abs_):
    model, x, kwargs = case
    ours = saliency_fast.Saliency(model).attribute(x, abs=abs_, **kwargs)
    theirs = captum.attr.Saliency(model).attribute(x, abs=abs_, **kwargs)
    assert relative_difference(ours, theirs) <= TOL
    assert all(p.requires_grad for p in model.parameters()), "parameters must be unfrozen afterwards"


def test_input_x_gradient_matches_captum(case):
    model, x, kwargs = case
    ours = saliency_fast.InputXGradient(model).attribute(x, **kwargs)
    theirs = captum.attr.InputXGradient(model).attribute(x, **kwargs)
    assert relative_difference(ours, theirs) <= TOL


@pytest.mark.parametrize("method", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
def test_integrated_gradients_matches_captum(case, method):
    model, x, kwargs = case
    baselines = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    args = dict(baselines=baselines, n_steps=20, method=method, internal_batch_size=3 * x.shape[0],
                return_convergence_delta=True, **kwargs)
    ours, delta = saliency_fast.IntegratedGradients(model).attribute(x, **args)
    theirs, their_delta = captum.attr.IntegratedGradients(model).attribute(x, **args)
    assert relative_difference(ours, theirs) <= TOL
    # deltas are small differences of large numbers: compare them on the scale of the outputs' change
    change = (model(x, *kwargs.get("additional_forward_args", ())) - model(baselines, *kwargs.get(
        "additional_forward_args", ()))).abs().max()
    assert float((delta - their_delta).abs().max()) <= TOL * float(change)
    assert float(delta.abs().max()) > 0, "a zero delta would make the comparison empty"


def test_integrated_gradients_chunking_changes_nothing(bert):
    model, x, kwargs = _bert_case(bert)
    ig = saliency_fast.IntegratedGradients(model)
    whole = ig.attribute(x, n_steps=12, **kwargs)
    chunked = ig.attribute(x, n_steps=12, internal_batch_size=5 * x.shape[0], **kwargs)
    assert relative_difference(chunked, whole) <= TOL


@pytest.mark.parametrize(
    "target",
    [(1, 2), [(0, 1), (1, 2), (0, 0)], (0, -1)],
    ids=["tuple", "list-of-tuples", "negative"],
)
def test_tuple_inputs_and_multi_dim_targets_match_captum(target):
    model = TwoInputModel()
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(3, 4, 8, generator=gen), torch.randn(3, 5, generator=gen)
    shift = torch.randn(3, 6, generator=gen)
    kwargs = dict(target=target, additional_forward_args=(shift,))
    for ours_cls, their_cls, extra in [
        (saliency_fast.Saliency, captum.attr.Saliency, {}),
        (saliency_fast.IntegratedGradients, captum.attr.IntegratedGradients,
         dict(baselines=(0.0, torch.zeros(1, 5)), n_steps=7, internal_batch_size=6)),
    ]:
        ours = ours_cls(model).attribute((x, y), **kwargs, **extra)
        theirs = their_cls(model).attribute((x, y), **kwargs, **extra)
        assert isinstance(ours, tuple) and len(ours) == 2
        assert relative_difference(ours, theirs) <= TOL


def test_tensor_targets_match_captum():
    model, x, _ = _mlp_case()
    for target in (torch.tensor([2, 0, 1, 1]), torch.tensor(2), torch.tensor([1])):
        ours = saliency_fast.IntegratedGradients(model).attribute(x, target=target, n_steps=5)
        theirs = captum.attr.IntegratedGradients(model).attribute(x, target=target, n_steps=5)
        assert relative_difference(ours, theirs) <= TOL


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_matches_captum_with_the_same_noise(nt_type):
    """Same global seed: our noise is drawn in captum's order and shapes, so results agree."""
    model, x, kwargs = _mlp_case()
    args = dict(nt_type=nt_type, nt_samples=5, nt_samples_batch_size=2, stdevs=0.3, **kwargs)
    torch.manual_seed(11)
    ours = saliency_fast.NoiseTunnel(saliency_fast.Saliency(model)).attribute(x, **args)
    torch.manual_seed(11)
    theirs = captum.attr.NoiseTunnel(captum.attr.Saliency(model)).attribute(x, **args)
    assert relative_difference(ours, theirs) <= TOL


def test_noise_tunnel_over_integrated_gradients_matches_captum(bert):
    model, x, kwargs = _bert_case(bert)
    args = dict(nt_type="smoothgrad", nt_samples=3, stdevs=0.05, n_steps=6, return_convergence_delta=True, **kwargs)
    torch.manual_seed(12)
    ours, delta = saliency_fast.NoiseTunnel(saliency_fast.IntegratedGradients(model)).attribute(x, **args)
    torch.manual_seed(12)
    theirs, their_delta = captum.attr.NoiseTunnel(captum.attr.IntegratedGradients(model)).attribute(x, **args)
    assert relative_difference(ours, theirs) <= TOL
    assert delta.shape == their_delta.shape == (x.shape[0] * 3,)
    assert float((delta - their_delta).abs().max()) <= 1e-4 * float(their_delta.abs().max())


@pytest.mark.parametrize("perturbations_per_eval", [1, 3])
def test_feature_ablation_matches_captum(case, perturbations_per_eval):
    model, x, kwargs = case
    # one feature per token, the same ids for every example (ablating whole embeddings)
    mask = torch.arange(x.shape[1]).reshape(1, -1, 1).expand(1, -1, x.shape[2])
    args = dict(feature_mask=mask, perturbations_per_eval=perturbations_per_eval, baselines=0.5, **kwargs)
    ours = saliency_fast.FeatureAblation(model).attribute(x, **args)
    theirs = captum.attr.FeatureAblation(model).attribute(x, **args)
    assert relative_difference(ours, theirs) <= TOL


def test_feature_ablation_default_mask_and_cross_tensor_features_match_captum():
    model = TwoInputModel(dim=3, k=4)
    gen = torch.Generator().manual_seed(9)
    x, y = torch.randn(2, 2, 3, generator=gen), torch.randn(2, 4, generator=gen)
    ours = saliency_fast.FeatureAblation(model).attribute((x, y), target=(1, 1), perturbations_per_eval=4)
    theirs = captum.attr.FeatureAblation(model).attribute((x, y), target=(1, 1), perturbations_per_eval=4)
    assert relative_difference(ours, theirs) <= TOL
    # feature 0 spans both tensors; per-example masks for y
    masks = (torch.tensor([[[0, 0, 1], [2, 2, 1]]]), torch.tensor([[0, 3, 3, 4], [4, 0, 3, 3]]))
    ours = saliency_fast.FeatureAblation(model).attribute((x, y), target=(0, 2), feature_mask=masks)
    theirs = captum.attr.FeatureAblation(model).attribute((x, y), target=(0, 2), feature_mask=masks)
    assert relative_difference(ours, theirs) <= TOL


@pytest.mark.parametrize(
    "window,strides,ppe",
    [
        (lambda d: (1, d), None, 1),  # one token at a time
        (lambda d: (2, d // 2), lambda d: (1, 3 * d // 8), 4),  # the last window of dim 2 is cut at the border
        (lambda d: (3, d // 4), lambda d: 2, 4),
    ],
    ids=["token", "cut-windows", "stride-int"],
)
def test_occlusion_matches_captum(case, window, strides, ppe):
    model, x, kwargs = case
    dim = x.shape[-1]
    args = dict(sliding_window_shapes=window(dim), strides=strides and strides(dim), perturbations_per_eval=ppe,
                **kwargs)
    ours = saliency_fast.Occlusion(model).attribute(x, **args)
    theirs = captum.attr.Occlusion(model).attribute(x, **args)
    assert relative_difference(ours, theirs) <= TOL


def test_occlusion_tuple_inputs_match_captum():
    model = TwoInputModel(dim=3, k=4)
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 3, 3, generator=gen), torch.randn(2, 4, generator=gen)
    args = dict(sliding_window_shapes=((2, 2), (3,)), strides=(1, 1), target=(1, 0), baselines=(0.2, -0.1),
                perturbations_per_eval=3)
    ours = saliency_fast.Occlusion(model).attribute((x, y), **args)
    theirs = captum.attr.Occlusion(model).attribute((x, y), **args)
    assert relative_difference(ours, theirs) <= TOL
