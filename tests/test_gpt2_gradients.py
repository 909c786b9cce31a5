"""The hand-written GPT-2 pass: autograd's gradients per target, and taken only where it applies.

Its backward is checked against autograd on each target's prefix alone (float64, so only summation
order differs), and generation saliency through it against the generic autograd pass; the probe
must refuse every model the written-out forward does not reproduce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast
from saliency_fast.hf import generation, gpt2_gradients, lm_head
from tiny_models import tiny_gpt2

FULL = "the movie was good w5 w7 bad i w12 w3 w9"


def prefix_gradient(model, embeds, position, seed):
    """``d (hidden[:, position] . seed) / d embeds`` on the prefix ``0 .. position`` alone."""
    x = embeds[:, : position + 1].clone().requires_grad_(True)
    hidden = lm_head.body_hidden(model, x)
    return torch.autograd.grad((hidden[:, position] * seed).sum(), x)[0]


@pytest.mark.parametrize("n_points", [1, 3])
def test_backward_equals_autograd_on_each_prefix(n_points):
    model, _ = tiny_gpt2(n_layer=3, n_head=4, n_embd=32)
    model = model.double()
    engine = gpt2_gradients.for_model(model, n_points, 12, None)
    assert engine is not None
    embeds = torch.randn(n_points, 12, 32, dtype=torch.float64)
    state = engine.forward(embeds)
    torch.testing.assert_close(state.hidden, lm_head.body_hidden(model, embeds).detach())
    positions = torch.tensor([7, 2, 5, 0, 11])  # any order, gaps, the first and the last row
    seeds = torch.randn(n_points, len(positions), 32, dtype=torch.float64)
    grads = engine.backward(state, positions, seeds)
    assert grads.shape == (len(positions), n_points, 12, 32)
    for i, p in enumerate(positions.tolist()):
        torch.testing.assert_close(grads[i, :, : p + 1], prefix_gradient(model, embeds, p, seeds[:, i]),
                                   rtol=1e-10, atol=1e-12)
        assert not grads[i, :, p + 1 :].any()  # rows after the target's own position: exactly zero


def test_layer_scaled_attention_is_written_out_too():
    model, _ = tiny_gpt2(scale_attn_by_inverse_layer_idx=True)
    engine = gpt2_gradients.for_model(model.double(), 1, 6, None)
    assert engine is not None
    embeds = torch.randn(1, 6, 32, dtype=torch.float64)
    seeds = torch.randn(1, 1, 32, dtype=torch.float64)
    grads = engine.backward(engine.forward(embeds), torch.tensor([5]), seeds)
    torch.testing.assert_close(grads[0], prefix_gradient(model, embeds, 5, seeds[:, 0]))


def _explainer(model, tok):
    return saliency_fast.Explainer(model, tok)


def saliency(explainer, hand_written: bool, monkeypatch, **kwargs):
    """Generation saliency, through the hand-written pass or (``False``) the generic one, asserting
    which ran."""
    gpt2_gradients.for_model(explainer.model, 1, 1, None)  # the once-per-model probe runs a backward too
    calls = []
    backward = gpt2_gradients.GPT2Gradients.backward

    def counted(self, *args):
        calls.append(args[1].shape[0])
        return backward(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(gpt2_gradients.GPT2Gradients, "backward", counted)
        if not hand_written:
            patch.setattr(gpt2_gradients, "MAX_STATE_BYTES", 0)
        kwargs.setdefault("progress", False)
        result = generation.attribute_generation(explainer, "the movie was", generated_text=FULL, **kwargs)
    assert bool(calls) == hand_written
    return result, calls


@pytest.mark.parametrize("target", ["logit", "prob", "logprob", "loss"])
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_generation_saliency_equals_the_generic_pass(method, target, monkeypatch):
    explainer = _explainer(*tiny_gpt2(n_layer=3))
    ours, calls = saliency(explainer, True, monkeypatch, method=method, target=target, aggregate="none")
    generic, _ = saliency(explainer, False, monkeypatch, method=method, target=target, aggregate="none")
    assert sum(calls) == ours.scores.shape[0]  # every target exactly once, in chunks
    assert max(calls) <= gpt2_gradients.TARGETS_PER_CHUNK
    torch.testing.assert_close(ours.scores, generic.scores, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("method,kwargs,n_batches", [
    ("integrated_gradients", {"n_steps": 7, "internal_batch_size": 3}, 3),
    ("smoothgrad", {"nt_samples": 5, "nt_samples_batch_size": 2, "seed": 1, "stdevs": 0.1}, 3),
    ("vargrad", {"nt_samples": 4, "nt_samples_batch_size": 4, "seed": 2, "stdevs": 0.1}, 1),
    ("discretized_integrated_gradients", {"n_steps": 6, "internal_batch_size": 4}, None),
])
def test_path_and_noise_methods_equal_the_generic_pass(method, kwargs, n_batches, monkeypatch):
    """Every batch of points runs one forward, kept for every chunk of targets; each chunk's backward
    runs once per batch."""
    explainer = _explainer(*tiny_gpt2(n_layer=3))
    args = dict(method=method, target="prob", aggregate="none", baseline="unk", **kwargs)
    ours, calls = saliency(explainer, True, monkeypatch, **args)
    generic, _ = saliency(explainer, False, monkeypatch, **args)
    n_targets = ours.scores.shape[0]
    if n_batches is not None:
        assert sum(calls) == n_targets * n_batches
    torch.testing.assert_close(ours.scores, generic.scores, rtol=1e-5, atol=1e-6, equal_nan=True)
    if "completeness_error" in ours.metadata and ours.metadata["completeness_error"] is not None:
        np.testing.assert_allclose(ours.metadata["completeness_error"], generic.metadata["completeness_error"],
                                   rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method,kwargs", [("saliency", {}), ("integrated_gradients", {"n_steps": 6, "baseline": "unk"})])
def test_bfloat16_runs_the_matmuls_in_bf16_and_stays_close(method, kwargs, monkeypatch):
    """With ``dtype=torch.bfloat16`` the projections and attention matmuls run in bf16 (norms,
    softmax and the residual stream in float32, as under autocast): as close to float32 as the
    generic autocast pass is."""
    explainer = _explainer(*tiny_gpt2(n_layer=3))
    args = dict(method=method, target="prob", aggregate="l2", **kwargs)
    exact, _ = saliency(explainer, True, monkeypatch, **args)
    ours, _ = saliency(explainer, True, monkeypatch, dtype=torch.bfloat16, **args)
    generic, _ = saliency(explainer, False, monkeypatch, dtype=torch.bfloat16, **args)
    mask = exact.mask

    def error(result):
        return float((result.scores[mask] - exact.scores[mask]).abs().max() / exact.scores[mask].abs().max())

    assert 0 < error(ours) < 2e-2 and error(ours) < 3 * error(generic)
    engine = gpt2_gradients.for_model(explainer.model, 1, 11, torch.bfloat16)
    state = engine.forward(torch.randn(1, 11, 32), engine.weights(torch.bfloat16))
    assert state.blocks[0].q.dtype == torch.bfloat16 and state.hidden.dtype == torch.float32


def test_target_batch_size_caps_the_chunks(monkeypatch):
    explainer = _explainer(*tiny_gpt2())
    _, calls = saliency(explainer, True, monkeypatch, target_batch_size=3)
    assert calls == [3, 3, 2]


@pytest.mark.parametrize("why", ["training", "fp16", "too long", "hook"])
def test_the_generic_pass_runs_where_the_hand_written_one_does_not_apply(why, monkeypatch):
    model, tok = tiny_gpt2()
    kwargs = {}
    if why == "training":
        model.train()  # dropout is 0 in tiny_gpt2, so results still compare
    elif why == "fp16":  # bf16 runs here, fp16 (overflow-prone) under autocast only
        kwargs["dtype"] = torch.float16
    elif why == "hook":  # the written-out forward would skip it
        model.transformer.h[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
    else:
        monkeypatch.setattr(gpt2_gradients, "MAX_STATE_BYTES", gpt2_gradients.GPT2Gradients(model).state_bytes(1, 11) - 1)
    assert gpt2_gradients.for_model(model, 1, 11, kwargs.get("dtype")) is None
    saliency(_explainer(model, tok), False, monkeypatch, **kwargs)


def test_a_hook_that_only_observes_keeps_the_hand_written_pass(monkeypatch):
    """transformers installs output-capturing hooks on the blocks the first time attentions are
    asked for: they change nothing, so the probe (rerun when the hooks change) passes."""
    explainer = _explainer(*tiny_gpt2())
    model = explainer.model
    assert gpt2_gradients.for_model(model, 1, 11, None) is not None
    model.transformer.h[1].attn.register_forward_hook(lambda module, args, out: None)
    model(torch.tensor([[1, 2, 3]]), output_attentions=True)
    assert gpt2_gradients.for_model(model, 1, 11, None) is not None
    saliency(explainer, True, monkeypatch)
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert gpt2_gradients.for_model(model, 1, 11, None) is None
    handle.remove()
    assert gpt2_gradients.for_model(model, 1, 11, None) is not None


class _Shifted(nn.Module):
    """A block's MLP with its output nudged: no longer what the written-out forward computes."""

    def __init__(self, mlp):
        super().__init__()
        self.inner = mlp
        for name in ("c_fc", "c_proj", "act"):
            setattr(self, name, getattr(mlp, name))

    def forward(self, x):
        return self.inner(x) * 1.01


@pytest.mark.parametrize("change", ["mlp output", "activation", "not gpt2", "nan weights"])
def test_the_probe_refuses_models_the_written_out_pass_does_not_reproduce(change):
    model, _ = tiny_gpt2()
    if change == "mlp output":
        model.transformer.h[1].mlp = _Shifted(model.transformer.h[1].mlp)
    elif change == "activation":
        model.transformer.h[0].mlp.act = nn.ReLU()  # no fused pair: its derivative is not written out
    elif change == "not gpt2":
        model.transformer.ln_f = nn.Identity()
    else:
        with torch.no_grad():
            model.transformer.h[0].attn.c_attn.weight[0, 0] = float("nan")
    assert gpt2_gradients.for_model(model, 1, 8, None) is None
