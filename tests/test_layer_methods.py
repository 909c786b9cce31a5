"""Layer methods against captum 0.9 on small random BERT and GPT-2 models (float32, max relative
difference <= 1e-5 over each output), completeness of layer IG, the shared input path against
captum's InternalInfluence, several layers in one pass against each layer alone, and bad input."""

from __future__ import annotations

import captum.attr
import pytest
import torch
from torch import nn

import saliency_fast
from saliency_fast.methods import layer as layer_module
from saliency_fast.methods._common import Target
from tests import tiny_models
from tests.test_methods_models import BertLogits, TokenMLP, relative_difference

TOL = 1e-5


class GPT2LastLogits(nn.Module):
    """A random GPT-2 over ``inputs_embeds``: the next-token logits at the last position."""

    def __init__(self, n_layer: int = 3) -> None:
        super().__init__()
        self.gpt2, _ = tiny_models.tiny_gpt2(n_layer=n_layer)

    def forward(self, embeds):
        return self.gpt2(inputs_embeds=embeds).logits[:, -1]

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.gpt2.transformer.h)

    def embed(self, n: int = 3, length: int = 6) -> torch.Tensor:
        ids = torch.randint(5, 200, (n, length), generator=torch.Generator().manual_seed(4))
        return self.gpt2.transformer.wte(ids).detach()


@pytest.fixture(scope="module")
def bert():
    return BertLogits()


@pytest.fixture(scope="module")
def gpt2():
    return GPT2LastLogits()


def _baselines(x: torch.Tensor) -> torch.Tensor:
    return 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))


def _bert_case(bert):
    x = bert.embed()
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    mask[1, -2:] = 0
    return bert, x, list(bert.bert.bert.encoder.layer), {"target": [1, 0, 2], "additional_forward_args": (mask,)}


def _gpt2_case(gpt2):
    return gpt2, gpt2.embed(), gpt2.blocks, {"target": 7}


@pytest.fixture(params=["bert", "gpt2"])
def case(request, bert, gpt2):
    return _bert_case(bert) if request.param == "bert" else _gpt2_case(gpt2)


def _forward(model, x, kwargs):
    with torch.no_grad():
        return model(x, *kwargs.get("additional_forward_args", ()))


# ------------------------------------------------------------------------------ captum parity


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle", "riemann_right"])
def test_layer_integrated_gradients_matches_captum(case, method):
    model, x, blocks, kwargs = case
    args = dict(baselines=_baselines(x), n_steps=12, method=method, internal_batch_size=5 * x.shape[0],
                return_convergence_delta=True, **kwargs)
    for block in (blocks[0], blocks[-1]):
        ours, delta = saliency_fast.LayerIntegratedGradients(model, block).attribute(x, **args)
        theirs, their_delta = captum.attr.LayerIntegratedGradients(model, block).attribute(x, **args)
        assert ours.shape == theirs.shape == x.shape
        assert relative_difference(ours, theirs.detach()) <= TOL
        change = (_forward(model, x, kwargs) - _forward(model, args["baselines"], kwargs)).abs().max()
        assert float((delta - their_delta).abs().max()) <= TOL * float(change)


@pytest.mark.parametrize("multiply", [True, False])
def test_layer_integrated_gradients_without_multiplier_matches_captum(bert, multiply):
    model, x, blocks, kwargs = _bert_case(bert)
    args = dict(baselines=_baselines(x), n_steps=8, **kwargs)
    ours = saliency_fast.LayerIntegratedGradients(model, blocks[1], multiply_by_inputs=multiply).attribute(x, **args)
    theirs = captum.attr.LayerIntegratedGradients(model, blocks[1], multiply_by_inputs=multiply).attribute(x, **args)
    assert relative_difference(ours, theirs.detach()) <= TOL


@pytest.mark.parametrize("multiply", [True, False])
def test_layer_gradient_x_activation_matches_captum(case, multiply):
    model, x, blocks, kwargs = case
    ours = saliency_fast.LayerGradientXActivation(model, blocks[0], multiply_by_inputs=multiply).attribute(x, **kwargs)
    theirs = captum.attr.LayerGradientXActivation(model, blocks[0], multiply_by_inputs=multiply).attribute(x, **kwargs)
    assert relative_difference(ours, theirs) <= TOL


@pytest.mark.parametrize("abs_", [True, False])
def test_layer_saliency_is_captums_unmultiplied_layer_gradient(case, abs_):
    model, x, blocks, kwargs = case
    ours = saliency_fast.LayerSaliency(model, blocks[-1]).attribute(x, abs=abs_, **kwargs)
    grads = captum.attr.LayerGradientXActivation(model, blocks[-1], multiply_by_inputs=False).attribute(x, **kwargs)
    assert relative_difference(ours, grads.abs() if abs_ else grads) <= TOL
    if abs_:
        assert bool((ours >= 0).all())


def test_list_of_layers_matches_captum(bert):
    """Several independent layers: captum's list form for gradient x activation, and layer IG with
    both layers' activations replaced at once (query and key of one attention block)."""
    model, x, blocks, kwargs = _bert_case(bert)
    attention = blocks[0].attention.self
    pair = [attention.query, attention.key]
    ours = saliency_fast.LayerGradientXActivation(model, blocks).attribute(x, **kwargs)
    theirs = captum.attr.LayerGradientXActivation(model, blocks).attribute(x, **kwargs)
    assert isinstance(ours, list) and len(ours) == len(blocks)
    for a, b in zip(ours, theirs):
        assert relative_difference(a, b) <= TOL
    args = dict(baselines=_baselines(x), n_steps=8, **kwargs)
    with pytest.warns(UserWarning, match="must not feed each other"):
        ours = saliency_fast.LayerIntegratedGradients(model, pair).attribute(x, **args)
    theirs = captum.attr.LayerIntegratedGradients(model, pair).attribute(x, **args)
    for a, b in zip(ours, theirs):
        assert relative_difference(a, b.detach()) <= TOL


def test_attribute_to_layer_input_matches_captum(bert):
    model, x, blocks, kwargs = _bert_case(bert)
    dense = blocks[1].output.dense  # called with one positional input
    args = dict(baselines=_baselines(x), n_steps=8, attribute_to_layer_input=True, **kwargs)
    ours = saliency_fast.LayerIntegratedGradients(model, dense).attribute(x, **args)
    theirs = captum.attr.LayerIntegratedGradients(model, dense).attribute(x, **args)
    assert ours.shape[-1] == dense.in_features
    assert relative_difference(ours, theirs.detach()) <= TOL
    ours = saliency_fast.LayerGradientXActivation(model, dense).attribute(x, attribute_to_layer_input=True, **kwargs)
    theirs = captum.attr.LayerGradientXActivation(model, dense).attribute(x, attribute_to_layer_input=True, **kwargs)
    assert relative_difference(ours, theirs) <= TOL


def test_block_input_is_its_hidden_states(bert):
    """A Hugging Face block gets (hidden_states, bool mask, None) positionally: its input is the
    hidden states, which are the previous block's output."""
    model, x, blocks, kwargs = _bert_case(bert)
    into_second = saliency_fast.LayerGradientXActivation(model, blocks[1]).attribute(
        x, attribute_to_layer_input=True, **kwargs)
    out_of_first = saliency_fast.LayerGradientXActivation(model, blocks[0]).attribute(x, **kwargs)
    assert relative_difference(into_second, out_of_first) <= TOL


# ------------------------------------------------------------------------- the input path


def test_input_path_is_captums_internal_influence_times_the_activation_change(case):
    model, x, blocks, kwargs = case
    b = _baselines(x)
    args = dict(baselines=b, n_steps=10, method="gausslegendre", **kwargs)
    block = blocks[-1]
    influence = captum.attr.InternalInfluence(model, block).attribute(x, **args)
    ours = saliency_fast.LayerIntegratedGradients(model, block, multiply_by_inputs=False).attribute(
        x, path="inputs", **args)
    assert relative_difference(ours, influence) <= TOL
    change = (captum.attr.LayerActivation(model, block).attribute(x, additional_forward_args=kwargs.get(
        "additional_forward_args")) - captum.attr.LayerActivation(model, block).attribute(
        b, additional_forward_args=kwargs.get("additional_forward_args")))
    ours = saliency_fast.LayerIntegratedGradients(model, block).attribute(x, path="inputs", **args)
    assert relative_difference(ours, influence * change) <= TOL


def test_input_path_equals_layer_path_where_the_layer_is_affine():
    """On a layer affine in the inputs, the activations' path is the straight line either way."""
    model = TokenMLP()
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(3))
    args = dict(baselines=_baselines(x), target=[0, 2, 1, 2], n_steps=16)
    lig = saliency_fast.LayerIntegratedGradients(model, model.net[0])
    assert relative_difference(lig.attribute(x, path="inputs", **args), lig.attribute(x, path="layer", **args)) <= TOL


def test_the_two_paths_differ_past_a_nonlinear_block(gpt2):
    """Past the first block the activations' path is curved: the input path is another quantity,
    and its completeness only approximate."""
    model, x, blocks, kwargs = _gpt2_case(gpt2)
    lig = saliency_fast.LayerIntegratedGradients(model, blocks[-1])
    args = dict(baselines=_baselines(x), n_steps=16, return_convergence_delta=True, **kwargs)
    straight, straight_delta = lig.attribute(x, path="layer", **args)
    curved, curved_delta = lig.attribute(x, path="inputs", **args)
    assert relative_difference(curved, straight) > 1e-3
    assert float(curved_delta.abs().max()) > 10 * float(straight_delta.abs().max())


@pytest.mark.parametrize("internal_batch_size", [None, 7])
def test_all_layers_in_one_pass_equal_each_layer_alone(case, internal_batch_size):
    model, x, blocks, kwargs = case
    args = dict(baselines=_baselines(x), n_steps=6, internal_batch_size=internal_batch_size, path="inputs", **kwargs)
    together = saliency_fast.LayerIntegratedGradients(model, blocks).attribute(x, **args)
    assert isinstance(together, list) and len(together) == len(blocks)
    for block, found in zip(blocks, together):
        alone = saliency_fast.LayerIntegratedGradients(model, block).attribute(x, **args)
        assert relative_difference(found, alone) <= TOL
    for method in (saliency_fast.LayerGradientXActivation, saliency_fast.LayerSaliency):
        together = method(model, blocks).attribute(x, **kwargs)
        for block, found in zip(blocks, together):
            assert relative_difference(found, method(model, block).attribute(x, **kwargs)) <= TOL


def test_all_layers_count_one_forward_per_chunk(gpt2):
    model, x, blocks, kwargs = _gpt2_case(gpt2)
    calls = []
    handle = model.gpt2.register_forward_hook(lambda *_: calls.append(1))
    try:
        saliency_fast.LayerIntegratedGradients(model, blocks).attribute(
            x, n_steps=8, internal_batch_size=4 * x.shape[0], path="inputs", **kwargs)
    finally:
        handle.remove()
    assert len(calls) == 2 + 2  # the activations at inputs and baselines, then two chunks of 4 points


# ----------------------------------------------------------------------------- completeness


@pytest.mark.parametrize("index", [0, -1])
def test_layer_integrated_gradients_completeness(case, index):
    """Every block separates the inputs from the output, so the layer attributions add up to
    F(x) - F(x'); the error shrinks with the steps like the quadrature's."""
    model, x, blocks, kwargs = case
    b = _baselines(x)
    change = (_forward(model, x, kwargs) - _forward(model, b, kwargs))
    change = change[torch.arange(x.shape[0]), kwargs["target"]] if isinstance(kwargs["target"], list) \
        else change[:, kwargs["target"]]
    lig = saliency_fast.LayerIntegratedGradients(model, blocks[index])
    errors = []
    for n_steps in (2, 24):
        attr, delta = lig.attribute(x, baselines=b, n_steps=n_steps, return_convergence_delta=True, **kwargs)
        assert torch.allclose(attr.flatten(1).sum(1) - change, delta, atol=1e-5 * float(change.abs().max()))
        errors.append(float(delta.abs().max()))
    assert errors[1] <= 1e-4 * float(change.abs().max()) + 1e-6
    assert lig.last_layer_deltas.shape == (1, x.shape[0])


def test_auto_steps_reach_the_tolerance(bert):
    model, x, blocks, kwargs = _bert_case(bert)
    lig = saliency_fast.LayerIntegratedGradients(model, blocks[1])
    b = _baselines(x)
    attr, delta = lig.attribute(x, baselines=b, n_steps="auto", rtol=1e-3, return_convergence_delta=True, **kwargs)
    change = attr.flatten(1).sum(1) - delta
    assert bool((delta.abs() <= 1e-3 * change.abs() + 1e-6).all())
    assert set(lig.last_n_steps.tolist()) <= {3, 7, 15, 31, 63, 127}
    fixed = lig.attribute(x, baselines=b, n_steps=int(lig.last_n_steps.max()), **kwargs)
    assert relative_difference(attr, fixed) <= 1e-2


def test_bfloat16_autocast_is_close_to_float32(bert):
    model, x, blocks, kwargs = _bert_case(bert)
    args = dict(baselines=_baselines(x), n_steps=8, **kwargs)
    full = saliency_fast.LayerIntegratedGradients(model, blocks[0]).attribute(x, **args)
    half = saliency_fast.LayerIntegratedGradients(model, blocks[0], dtype=torch.bfloat16).attribute(x, **args)
    assert half.dtype == torch.float32
    assert relative_difference(half, full) <= 5e-2


def test_parameters_and_hooks_are_restored(bert):
    model, x, blocks, kwargs = _bert_case(bert)
    saliency_fast.LayerIntegratedGradients(model, blocks).attribute(x, n_steps=2, path="inputs", **kwargs)
    with pytest.raises(ValueError):
        saliency_fast.LayerGradientXActivation(model, blocks[0]).attribute(x, target=99, **{
            k: v for k, v in kwargs.items() if k != "target"})
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------------------------------- bad input


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.pick = nn.Embedding(4, 4)

    def forward(self, x):
        return self.shared(self.shared(x)).sum(-1)


class _Pooled(nn.Module):
    """Its ``pool`` layer mixes the examples (no batch dim); ``pick`` takes integer inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.pick = nn.Embedding(4, 4)
        self.pool = nn.Identity()

    def forward(self, x):
        pooled = self.pool(x.sum(0))
        return (self.pick(x.argmax(-1)) * pooled).sum(-1)


def test_bad_layers_are_rejected():
    model, x = _Twice(), torch.randn(3, 4)
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        saliency_fast.LayerSaliency(model, "shared")
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        saliency_fast.LayerSaliency(model, [])
    with pytest.raises(ValueError, match="same module twice"):
        saliency_fast.LayerSaliency(model, [model.shared, model.shared])
    with pytest.raises(ValueError, match="device_ids"):
        saliency_fast.LayerIntegratedGradients(model, model.shared, device_ids=[0])
    with pytest.raises(ValueError, match="more than once"):
        saliency_fast.LayerSaliency(model, model.shared).attribute(x)
    with pytest.raises(ValueError, match="did not run"):
        saliency_fast.LayerGradientXActivation(model, model.unused).attribute(x)
    pooled = _Pooled()
    with pytest.raises(ValueError, match="examples in dim 0"):
        saliency_fast.LayerSaliency(pooled, pooled.pool).attribute(x)
    with pytest.raises(ValueError, match="no floating-point tensor"):
        saliency_fast.LayerSaliency(pooled, pooled.pick).attribute(x, attribute_to_layer_input=True)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in list(model.modules()) + list(pooled.modules()))


def test_bad_arguments_are_rejected(bert):
    model, x, blocks, kwargs = _bert_case(bert)
    lig = saliency_fast.LayerIntegratedGradients(model, blocks[0])
    with pytest.raises(ValueError, match="path must be one of"):
        lig.attribute(x, path="straight", **kwargs)
    with pytest.raises(ValueError, match="exact only for path='layer'"):
        lig.attribute(x, n_steps="auto", path="inputs", **kwargs)
    with pytest.raises(ValueError, match="method must be 'gausslegendre'"):
        lig.attribute(x, n_steps="auto", method="riemann_left", **kwargs)
    with pytest.raises(TypeError, match="attribute_to_layer_input must be a bool"):
        lig.attribute(x, attribute_to_layer_input="yes", **kwargs)
    with pytest.raises(TypeError, match="multiply_by_inputs must be a bool"):
        saliency_fast.LayerGradientXActivation(model, blocks[0], multiply_by_inputs=1)
    with pytest.raises(TypeError, match="abs must be a bool"):
        saliency_fast.LayerSaliency(model, blocks[0]).attribute(x, abs=None, **kwargs)
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        lig.attribute(x, n_steps=0, **kwargs)
    with pytest.raises(ValueError, match="baselines"):
        lig.attribute(x, baselines=torch.zeros(2, 2), **kwargs)


def test_replacement_of_the_wrong_shape_is_rejected():
    model = TokenMLP()
    x = torch.randn(2, 5, 8)
    layers = layer_module.LayerSet([model.net[0]])
    with pytest.raises(ValueError, match="path points for"):
        layers.replaced_gradients(model, (x,), [(torch.zeros(2, 5, 3),)], Target.parse(0, 2), None)
