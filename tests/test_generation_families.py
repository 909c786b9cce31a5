"""Generation attribution on every decoder family, against a naive per-prefix autograd loop.

For each family of :data:`tiny_models.CAUSAL_FAMILIES` (a random 2-layer model of its own
architecture), the per-step matrices of saliency, input x gradient, integrated gradients and
occlusion must equal running each prefix alone through the model
(``model(inputs_embeds=prefix).logits[-1]``) and differentiating that one score, whichever engine
the model takes (``metadata["engine"]`` says which). bf16 runs are held to the error autocast's own
per-prefix loop makes.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import saliency_fast
from saliency_fast.hf import generation
from tiny_models import CAUSAL_FAMILIES, tiny_causal_lm

PROMPT = "the movie was"
FULL = "the movie was good w5 w7 bad i w12 w3"
N_PROMPT = 3
FAMILIES = sorted(CAUSAL_FAMILIES)
# the families a description in saliency_fast/hf/families/ covers: the described pass runs there
DESCRIBED = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "opt"}


@functools.cache
def explainer_of(family: str) -> saliency_fast.Explainer:
    model, tok = tiny_causal_lm(family)
    return saliency_fast.Explainer(model, tok)


def run(explainer, method, **kwargs):
    return generation.attribute_generation(explainer, PROMPT, generated_text=FULL, method=method, progress=False,
                                           **kwargs)


def naive(explainer, method, target, baseline_id=None, n_steps=None, dtype=None):
    """``[T, N, D]`` attributions (``[T, N]`` for occlusion) from each prefix run alone."""
    model = explainer.model
    ids = torch.tensor(explainer.tokenizer(FULL)["input_ids"])
    x = explainer.embedding(ids).detach()
    b = None if baseline_id is None else explainer.embedding(torch.full_like(ids, baseline_id)).detach()
    n = len(ids)
    per_token = method == "occlusion"
    out = torch.full((n - N_PROMPT, n) + (() if per_token else (x.shape[1],)), float("nan"))

    def score(prefix, token):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(inputs_embeds=prefix.unsqueeze(0)).logits[0, -1].float()
        logprob = logits.log_softmax(-1)[token]
        return {"logit": logits[token], "prob": logprob.exp(), "logprob": logprob}[target]

    def grad(prefix, token):
        prefix = prefix.clone().requires_grad_(True)
        return torch.autograd.grad(score(prefix, token), prefix)[0]

    for row, t in enumerate(range(N_PROMPT, n)):
        xp, token = x[:t], int(ids[t])
        if method == "saliency":
            out[row, :t] = grad(xp, token)
        elif method == "input_x_gradient":
            out[row, :t] = grad(xp, token) * xp
        elif method == "integrated_gradients":
            nodes, weights = np.polynomial.legendre.leggauss(n_steps)
            bp = b[:t]
            total = sum(0.5 * float(w) * grad(bp + 0.5 * (float(a) + 1) * (xp - bp), token)
                        for a, w in zip(nodes, weights))
            out[row, :t] = (xp - bp) * total
        else:
            with torch.no_grad():
                reference = score(xp, token)
                for j in range(t):
                    occluded = xp.clone()
                    occluded[j] = b[j]
                    out[row, j] = reference - score(occluded, token)
    return out


def row_errors(ours: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per row, max |ours - expected| / max |expected| (the NaN pattern must agree)."""
    assert ours.shape == expected.shape
    assert torch.equal(torch.isnan(ours), torch.isnan(expected))
    a, e = torch.nan_to_num(ours.double()), torch.nan_to_num(expected.double())
    scale = e.flatten(1).abs().amax(1)
    assert bool((scale > 0).all())
    return (a - e).flatten(1).abs().amax(1) / scale


@pytest.mark.parametrize("family", FAMILIES)
def test_saliency_equals_the_per_prefix_loop(family):
    explainer = explainer_of(family)
    ours = run(explainer, "saliency", target="prob", aggregate="none")
    assert row_errors(ours.scores, naive(explainer, "saliency", "prob")).max() <= 1e-4
    engine = ours.metadata["engine"]
    assert engine["name"] == ("layered" if family in DESCRIBED else "autograd"), engine
    assert engine["family"] == (family if family in DESCRIBED else None) and engine["reason"]


@pytest.mark.parametrize("family", FAMILIES)
def test_input_x_gradient_equals_the_per_prefix_loop(family):
    explainer = explainer_of(family)
    ours = run(explainer, "input_x_gradient", target="logprob", aggregate="none")
    assert row_errors(ours.scores, naive(explainer, "input_x_gradient", "logprob")).max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_equal_the_per_prefix_loop(family):
    explainer = explainer_of(family)
    unk = explainer.tokenizer.unk_token_id
    ours = run(explainer, "integrated_gradients", target="logit", aggregate="none", baseline="unk", n_steps=4,
               internal_batch_size=2)
    assert row_errors(ours.scores, naive(explainer, "integrated_gradients", "logit", unk, n_steps=4)).max() <= 1e-4
    assert ours.metadata["engine"]["name"] == ("layered" if family in DESCRIBED else "autograd")


@pytest.mark.parametrize("family", FAMILIES)
def test_occlusion_equals_the_per_prefix_loop(family):
    explainer = explainer_of(family)
    pad = explainer.tokenizer.pad_token_id
    ours = run(explainer, "occlusion", target="logprob", baseline="pad", perturbations_per_eval=4)
    assert row_errors(ours.scores, naive(explainer, "occlusion", "logprob", pad)).max() <= 1e-4
    assert ours.metadata["engine"] == {"name": "autograd", "family": None, "reason": "forward passes only"}


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_bfloat16_errs_no_more_than_autocasts_own_loop(family):
    """bf16 against the float32 loop: within twice the error of the per-prefix loop under bf16
    autocast (the flash-attention rule for low precision), and close in any case."""
    explainer = explainer_of(family)
    unk = explainer.tokenizer.unk_token_id
    for method, kwargs in (("saliency", {}), ("integrated_gradients", {"n_steps": 4, "baseline": "unk"})):
        ours = run(explainer, method, target="logit", aggregate="none", dtype=torch.bfloat16, **kwargs)
        assert ours.metadata["dtype"] == "bfloat16" and ours.metadata["engine"]["name"] == "layered"
        baseline_id = unk if kwargs else None
        exact = naive(explainer, method, "logit", baseline_id, n_steps=4)
        autocast = naive(explainer, method, "logit", baseline_id, n_steps=4, dtype=torch.bfloat16)
        ours_error, autocast_error = row_errors(ours.scores, exact), row_errors(autocast, exact)
        assert ours_error.max() <= max(2 * autocast_error.max(), 1e-3), (method, ours_error, autocast_error)
        assert ours_error.max() <= 0.05
