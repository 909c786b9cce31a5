"""The described decoder pass: autograd's gradients per target on every described family, and taken
only where it applies.

Its backward is checked against autograd on each target's prefix alone (float64, so only summation
order differs) for every family with a description (and variants: sliding windows, partial rotary,
layer-scaled attention), and generation through it against the generic autograd pass; the probe must
refuse (and warn about) every model the described forward does not reproduce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import saliency_fast
from saliency_fast.hf import decoder_pass, generation, lm_head
from tiny_models import tiny_causal_lm, tiny_gpt2

FULL = "the movie was good w5 w7 bad i w12 w3 w9"


def prefix_gradient(model, embeds, position, seed):
    """``d (hidden[:, position] . seed) / d embeds`` on the prefix ``0 .. position`` alone."""
    x = embeds[:, : position + 1].clone().requires_grad_(True)
    hidden = lm_head.body_hidden(model, x)
    return torch.autograd.grad((hidden[:, position] * seed).sum(), x)[0]


def engine_of(model, n_points=1, length=11, dtype=None):
    return decoder_pass.select(model, n_points, length, dtype).engine


@pytest.mark.parametrize("family,overrides", [
    ("gpt2", {"n_layer": 3, "n_head": 4}), ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),
    ("llama", {}), ("mistral", {"sliding_window": 3}), ("qwen2", {}), ("qwen3", {}), ("gemma", {}),
    ("phi3", {}), ("phi3", {"partial_rotary_factor": 0.5}), ("opt", {}),
])
@pytest.mark.parametrize("n_points", [1, 3])
def test_backward_equals_autograd_on_each_prefix(family, overrides, n_points):
    model, _ = tiny_causal_lm(family, **overrides)
    model = model.double()
    engine = engine_of(model, n_points, 12)
    assert engine is not None and engine.family == family
    width = model.get_input_embeddings().embedding_dim
    embeds = torch.randn(n_points, 12, width, dtype=torch.float64)
    state = engine.forward(embeds)
    torch.testing.assert_close(state.hidden, lm_head.body_hidden(model, embeds).detach())
    positions = torch.tensor([7, 2, 5, 0, 11])  # any order, gaps, the first and the last row
    seeds = torch.randn(n_points, len(positions), width, dtype=torch.float64)
    grads = engine.backward(state, positions, seeds)
    assert grads.shape == (len(positions), n_points, 12, width)
    # transformers' RMSNorms compute in float32 even in a float64 model (the described ones too)
    rtol = 1e-10 if family == "gpt2" else 1e-5
    for i, p in enumerate(positions.tolist()):
        expected = prefix_gradient(model, embeds, p, seeds[:, i])
        torch.testing.assert_close(grads[i, :, : p + 1], expected, rtol=0, atol=rtol * float(expected.abs().max()))
        assert not grads[i, :, p + 1 :].any()  # rows after the target's own position: exactly zero


def _explainer(model, tok):
    return saliency_fast.Explainer(model, tok)


def saliency(explainer, hand_written: bool, monkeypatch, **kwargs):
    """Generation attribution, through the described pass or (``False``) the generic one, asserting
    which ran."""
    engine_of(explainer.model, 1, 1)  # the once-per-model probe runs a backward too
    calls = []
    backward = decoder_pass.DecoderPass.backward

    def counted(self, *args):
        calls.append(args[1].shape[0])
        return backward(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(decoder_pass.DecoderPass, "backward", counted)
        if not hand_written:
            patch.setattr(decoder_pass, "MAX_STATE_BYTES", 0)
        kwargs.setdefault("progress", False)
        result = generation.attribute_generation(explainer, "the movie was", generated_text=FULL, **kwargs)
    assert bool(calls) == hand_written
    assert result.metadata["engine"]["name"] == ("layered" if hand_written else "autograd")
    return result, calls


@pytest.mark.parametrize("target", ["logit", "prob", "logprob", "loss"])
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_saliency_equals_the_generic_pass(family, method, target, monkeypatch):
    explainer = _explainer(*tiny_causal_lm(family))
    ours, calls = saliency(explainer, True, monkeypatch, method=method, target=target, aggregate="none")
    generic, _ = saliency(explainer, False, monkeypatch, method=method, target=target, aggregate="none")
    assert sum(calls) == ours.scores.shape[0]  # every target exactly once, in chunks
    assert max(calls) <= decoder_pass.TARGETS_PER_CHUNK
    torch.testing.assert_close(ours.scores, generic.scores, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("method,kwargs,n_batches", [
    ("integrated_gradients", {"n_steps": 7, "internal_batch_size": 3}, 3),
    ("smoothgrad", {"nt_samples": 5, "nt_samples_batch_size": 2, "seed": 1, "stdevs": 0.1}, 3),
    ("vargrad", {"nt_samples": 4, "nt_samples_batch_size": 4, "seed": 2, "stdevs": 0.1}, 1),
    ("discretized_integrated_gradients", {"n_steps": 6, "internal_batch_size": 4}, None),
])
@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_path_and_noise_methods_equal_the_generic_pass(family, method, kwargs, n_batches, monkeypatch):
    """Every batch of points runs one forward, kept for every chunk of targets; each chunk's backward
    runs once per batch."""
    explainer = _explainer(*tiny_causal_lm(family))
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
    engine = engine_of(explainer.model, 1, 11, torch.bfloat16)
    state = engine.forward(torch.randn(1, 11, 32), engine.weights(torch.bfloat16))
    assert state.blocks[0].attention.q.dtype == torch.bfloat16 and state.hidden.dtype == torch.float32


def test_target_batch_size_caps_the_chunks(monkeypatch):
    explainer = _explainer(*tiny_gpt2())
    _, calls = saliency(explainer, True, monkeypatch, target_batch_size=3)
    assert calls == [3, 3, 2]


@pytest.mark.parametrize("why", ["training", "fp16", "too long", "hook", "bf16 weights"])
def test_the_generic_pass_runs_where_the_described_one_does_not_apply(why, monkeypatch):
    model, tok = tiny_gpt2()
    kwargs = {}
    if why == "training":
        model.train()  # dropout is 0 in tiny_gpt2, so results still compare
    elif why == "fp16":  # bf16 runs here, fp16 (overflow-prone) under autocast only
        kwargs["dtype"] = torch.float16
    elif why == "bf16 weights":  # a model loaded in bf16 runs as it is, through autograd
        model = model.to(torch.bfloat16)
    elif why == "hook":  # the described forward would skip it
        model.transformer.h[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
        with pytest.warns(RuntimeWarning, match="failed its probe"):
            engine_of(model, 1, 10)
    else:
        monkeypatch.setattr(decoder_pass, "MAX_STATE_BYTES", engine_of(model).state_bytes(1, 10) - 1)
    selection = decoder_pass.select(model, 1, 10, kwargs.get("dtype"))  # 11 tokens: a 10-token prefix
    assert selection.engine is None and selection.reason
    result, _ = saliency(_explainer(model, tok), False, monkeypatch, **kwargs)
    if why in ("fp16", "hook", "bf16 weights"):  # checked before the size (saliency() sets it to 0); eval mode
        assert result.metadata["engine"]["reason"] == selection.reason


def test_a_hook_that_only_observes_keeps_the_described_pass(monkeypatch):
    """transformers installs output-capturing hooks on the blocks the first time attentions are
    asked for: they change nothing, so the probe (rerun when the hooks change) passes."""
    explainer = _explainer(*tiny_gpt2())
    model = explainer.model
    assert engine_of(model) is not None
    model.transformer.h[1].attn.register_forward_hook(lambda module, args, out: None)
    model(torch.tensor([[1, 2, 3]]), output_attentions=True)
    assert engine_of(model) is not None
    saliency(explainer, True, monkeypatch)
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    with pytest.warns(RuntimeWarning, match="failed its probe"):
        assert engine_of(model) is None
    handle.remove()
    assert engine_of(model) is not None


class _Shifted(nn.Module):
    """A block's MLP with its output nudged: no longer what the described forward computes."""

    def __init__(self, mlp):
        super().__init__()
        self.inner = mlp
        for name in ("c_fc", "c_proj", "act"):
            setattr(self, name, getattr(mlp, name))

    def forward(self, x):
        return self.inner(x) * 1.01


@pytest.mark.parametrize("change", ["mlp output", "activation", "not gpt2", "nan weights"])
def test_the_probe_refuses_models_the_described_pass_does_not_reproduce(change):
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
    if change == "mlp output" or change == "nan weights":  # described, yet not reproduced: a warning, once
        with pytest.warns(RuntimeWarning, match="failed its probe"):
            assert engine_of(model, 1, 8) is None
    assert engine_of(model, 1, 8) is None
