"""The batched-backward patches compute the same function and first derivatives as the model."""

from __future__ import annotations

import pytest
import torch
import transformers.activations as hf_activations
import torch.nn.functional as F
from torch import nn

from saliency_fast.methods import _common, lean_backward
from tiny_models import tiny_bert, tiny_gpt2

ACTIVATIONS = [
    nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(),
    hf_activations.NewGELUActivation(), hf_activations.GELUActivation(), hf_activations.FastGELUActivation(),
    hf_activations.GELUTanh(), hf_activations.SiLUActivation(), hf_activations.MishActivation(),
]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__ + getattr(a, "approximate", ""))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fused_activation_equals_autograd(act, dtype):
    """The fused value and backward equal the module and autograd through it, for one seed and for
    batched seeds (one derivative times every target's gradient, as generation runs them), to each
    dtype's rounding."""
    x = (torch.randn(3, 5, 7, dtype=dtype) * 3).requires_grad_(True)
    seeds = torch.randn(4, *x.shape, dtype=dtype)
    expected_y = act(x)
    (expected,) = torch.autograd.grad(expected_y, x, seeds, is_grads_batched=True, retain_graph=True)
    (expected_one,) = torch.autograd.grad(expected_y, x, seeds[0])
    y = lean_backward.FusedActivation.apply(x, act, lean_backward._fused(act))
    (got,) = torch.autograd.grad(y, x, seeds, is_grads_batched=True, retain_graph=True)
    (got_one,) = torch.autograd.grad(y, x, seeds[0])
    tol = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]  # FastGELU: sqrt(2/pi) to 10 digits
    torch.testing.assert_close(y, expected_y, rtol=tol, atol=tol)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    torch.testing.assert_close(got_one, expected_one, rtol=tol, atol=tol)


def test_a_target_batched_backward_is_seen_as_batched():
    """The batched branch (one derivative, a multiply per target) must be taken under both vmaps:
    a missed batch still gives right values, through a per-target loop of the fused backward."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            seen.append(lean_backward._is_batched(grad))
            return grad * 2

    x = torch.randn(3, 4, requires_grad=True)
    y = Probe.apply(x)
    torch.autograd.grad(y, x, torch.randn(5, 3, 4), is_grads_batched=True, retain_graph=True)
    torch.func.vmap(lambda seed: torch.autograd.grad(y, x, seed, retain_graph=True)[0])(torch.randn(5, 3, 4))
    torch.autograd.grad(y, x, torch.randn(3, 4))
    assert seen == [True, True, False]


def test_only_activations_with_a_fused_pair_are_swapped():
    assert all(lean_backward._fused(a) is not None for a in ACTIVATIONS)
    for other in (nn.ReLU(), nn.Tanh(), hf_activations.QuickGELUActivation(), nn.Linear(2, 2)):
        assert lean_backward._fused(other) is None


def test_double_backward_differentiates_the_activation_itself():
    """Second derivatives differentiate the activation, not a saved first derivative."""
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    act = hf_activations.NewGELUActivation()
    expected = torch.autograd.functional.hessian(lambda v: (act(v) * v).sum(), x)
    y = lean_backward.FusedActivation.apply(x, act, lean_backward._fused(act)) * x
    (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    got = torch.stack([torch.autograd.grad(grad[i], x, retain_graph=True)[0] for i in range(6)])
    torch.testing.assert_close(got, expected)


def _batched_input_grads(model, embeds, outputs_fn):
    embeds = embeds.detach().requires_grad_(True)
    out = outputs_fn(model, embeds)  # [n_outputs]
    seeds = torch.eye(out.numel()).view(out.numel(), *out.shape)
    (grads,) = torch.autograd.grad(out, embeds, seeds, is_grads_batched=True)
    return out.detach(), grads


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_patched_models_give_the_same_outputs_and_gradients(name):
    if name == "gpt2":
        model, _ = tiny_gpt2()
        embeds = torch.randn(1, 9, 32)

        def outputs(m, e):
            return m(inputs_embeds=e).logits[0, :, 3]
    else:
        model = tiny_bert("classification")
        embeds = torch.randn(1, 9, model.config.hidden_size)

        def outputs(m, e):
            return m(inputs_embeds=e).logits[0]
    acts_before = [m for m in model.modules() if lean_backward._fused(m) is not None]
    expected = _batched_input_grads(model, embeds, outputs)
    with _common.gradient_mode(model):
        patched = [m for m in model.modules() if isinstance(m, lean_backward._FusedActivationModule)]
        assert len(patched) == len(acts_before) > 0
        got = _batched_input_grads(model, embeds, outputs)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-6)
    assert [m for m in model.modules() if lean_backward._fused(m) is not None] == acts_before


def test_modules_come_back_on_error_and_kept_ones_are_not_swapped():
    model, _ = tiny_gpt2()
    first, second = model.transformer.h[0].mlp.act, model.transformer.h[1].mlp.act
    with pytest.raises(KeyError), lean_backward.fused_activations(model, keep=(first,)) as n_swapped:
        assert n_swapped == 1 and model.transformer.h[0].mlp.act is first
        assert isinstance(model.transformer.h[1].mlp.act, lean_backward._FusedActivationModule)
        raise KeyError("boom")
    assert model.transformer.h[0].mlp.act is first and model.transformer.h[1].mlp.act is second


def test_forward_only_calls_skip_the_derivative():
    act = hf_activations.NewGELUActivation()
    wrapped = lean_backward._FusedActivationModule(act, lean_backward._fused(act))
    x = torch.randn(4, 8, requires_grad=True)
    with torch.no_grad():
        assert wrapped(x).grad_fn is None
    assert type(wrapped(x).grad_fn).__name__ == "FusedActivationBackward"


def _qkv(dtype, n_queries=7, n_keys=7, heads=3, dim=8):
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, heads, n_queries, dim), (2, heads, n_keys, dim), (2, heads, n_keys, dim)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_(True) for s in shapes]


def _masks(n_queries, n_keys):
    keys = torch.ones(2, 1, 1, n_keys, dtype=torch.bool)
    keys[0, ..., -2:] = False  # padding in the first sequence
    per_query = torch.rand(2, 1, n_queries, n_keys, generator=torch.Generator().manual_seed(1)) > 0.4
    per_query[..., 0] = True  # every query keeps a key
    additive = torch.randn(2, 3, n_queries, n_keys, dtype=torch.float64)
    return {"none": {}, "key padding": {"attn_mask": keys}, "per query": {"attn_mask": per_query},
            "additive": {"attn_mask": additive}, "causal": {"is_causal": True},
            "causal, more keys": {"is_causal": True, "n_keys": n_keys + 3}, "scale": {"scale": 0.3}}


@pytest.mark.parametrize("case", list(_masks(7, 7)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eager_attention_equals_sdpa(case, dtype):
    """Value and batched gradients equal PyTorch's SDPA for every mask form it takes."""
    kwargs = dict(_masks(7, 7)[case])
    q, k, v = _qkv(dtype, n_keys=kwargs.pop("n_keys", 7))
    if "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].to(dtype)
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    got = lean_backward.eager_attention(q, k, v, **kwargs)
    seeds = torch.randn(5, *expected.shape, dtype=dtype)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), seeds, is_grads_batched=True),
                    torch.autograd.grad(expected, (q, k, v), seeds, is_grads_batched=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_eager_attention_under_autocast_runs_at_the_autocast_precision():
    q, k, v = _qkv(torch.float32)
    mask = _masks(7, 7)["key padding"]["attn_mask"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = lean_backward.eager_attention(q, k, v, attn_mask=mask)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
    (grad,) = torch.autograd.grad(got.float().sum(), q)
    assert grad.dtype == torch.float32 and grad.isfinite().all()


@pytest.mark.parametrize("kwargs", [{"dropout_p": 0.1}, {"enable_gqa": True}, {"fully_masked": True}],
                         ids=["dropout", "gqa", "fully masked row"])
def test_eager_attention_declines_what_it_would_compute_differently(kwargs):
    """Dropout, grouped-query heads and a query with no key left go to SDPA (which gives zeros for
    that query where a plain softmax gives NaN), also through the routing mode."""
    q, k, v = _qkv(torch.float32)
    if kwargs.pop("fully_masked", False):
        mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
        mask[1, 0, 3] = False
        kwargs = {"attn_mask": mask}
    assert lean_backward.eager_attention(q, k, v, **kwargs) is None
    if "attn_mask" in kwargs:
        with lean_backward.gradient_pass_mode(torch.bfloat16, torch.device("cpu"), 2, 7):
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **kwargs))
        assert out.isfinite().all()


@pytest.mark.parametrize(("dtype", "rows", "length", "batched", "eager"), [
    (torch.bfloat16, 16, 31, False, True), (torch.float16, 1, 1024, False, True),
    (torch.bfloat16, 2, 1024, False, False), (None, 16, 31, False, False), (None, 16, 31, True, True),
])
def test_eager_attention_only_for_short_half_precision_or_batched_runs(dtype, rows, length, batched, eager):
    q, k, v = _qkv(torch.float32)
    with lean_backward.gradient_pass_mode(dtype, torch.device("cpu"), rows, length, batched=batched):
        name = type(F.scaled_dot_product_attention(q, k, v).grad_fn).__name__
    assert ("ScaledDotProduct" not in name) is eager, name
    assert "ScaledDotProduct" in type(F.scaled_dot_product_attention(q, k, v).grad_fn).__name__


def test_frozen_weights_are_cast_once_per_mode_and_exactly_as_autocast_casts_them():
    linear = nn.Linear(8, 6)
    x = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = linear(x)  # autocast's own casts (weights still trainable)
    linear.requires_grad_(False)
    mode = lean_backward.gradient_pass_mode(torch.bfloat16, torch.device("cpu"), 5, 8)
    with mode, torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = linear(x), torch.addmm(linear.bias, x, linear.weight.t())
        copies = {id(c) for _, _, c in mode._casts.values()}
        assert len(mode._casts) == 2  # weight and bias, each cast once for both calls
        with torch.no_grad():
            linear.weight.mul_(2)  # changed in place: cast again
        doubled = linear(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert {id(c) for _, _, c in mode._casts.values()} != copies
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(doubled, linear(x), rtol=0, atol=0)
    with mode:  # no autocast: nothing to cast
        assert linear(x).dtype == torch.float32


def test_trainable_weights_are_left_to_autocast():
    linear = nn.Linear(8, 6)
    mode = lean_backward.gradient_pass_mode(torch.bfloat16, torch.device("cpu"), 5, 8)
    with mode, torch.autocast("cpu", dtype=torch.bfloat16):
        linear(torch.randn(5, 8)).float().sum().backward()
    assert not mode._casts and linear.weight.grad is not None


def test_gradient_mode_swaps_activations_and_freezes_parameters():
    model, _ = tiny_gpt2()
    keep = model.transformer.h[0].mlp.act
    with _common.gradient_mode(model.forward, keep=(keep,)):
        assert not any(p.requires_grad for p in model.parameters())
        assert model.transformer.h[0].mlp.act is keep
        assert isinstance(model.transformer.h[1].mlp.act, lean_backward._FusedActivationModule)
    assert all(p.requires_grad for p in model.parameters()) and type(model.transformer.h[1].mlp.act) is type(keep)
