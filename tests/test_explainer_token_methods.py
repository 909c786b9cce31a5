"""The Explainer's lime, kernel_shap, gradient_shap, deeplift and grad_cam on a tiny random BERT:
equal to captum (LIME, KernelSHAP: same seed, same samples) or to the captum-compatible class /
a hand-written Grad-CAM on the same forward."""

from __future__ import annotations

import captum.attr
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso

import saliency_fast
from saliency_fast import Explainer
from tests.test_explainer import _forward, _inputs, rel_diff
from tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

TEXT = "the movie was surprisingly good"

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients")


@pytest.fixture(scope="module")
def bert():
    return tiny_bert("classification"), bert_tokenizer()


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_surrogates_equal_captum_with_the_same_seed(bert, method):
    model, tok = bert
    explainer = Explainer(model, tok)
    enc, x, base, special = _inputs(model, tok, TEXT)
    n = x.shape[1]
    # a random tiny BERT's logits move by ~1e-4 when tokens are removed: a Lasso penalty below that
    options = {"alpha": 1e-7} if method == "lime" else {}
    result = explainer.attribute(TEXT, method=method, target=1, n_samples=40, perturbations_per_eval=8, seed=5,
                                 **options)
    torch.manual_seed(5)
    kwargs = dict(baselines=base, target=1, feature_mask=torch.arange(n).view(1, n, 1), n_samples=40,
                  perturbations_per_eval=8)
    if method == "lime":
        expected = captum.attr.Lime(_forward(model, enc), SkLearnLasso(alpha=1e-7)).attribute(x, **kwargs)
    else:
        expected = captum.attr.KernelShap(_forward(model, enc)).attribute(x, **kwargs)
    got = result.scores[0]
    assert torch.isnan(got[special]).all()
    assert rel_diff(got[~special], expected[0, ~special, 0]) <= 1e-3
    assert got[~special].abs().max() > 0
    again = explainer.attribute(TEXT, method=method, target=1, n_samples=40, perturbations_per_eval=8, seed=5,
                                **options)
    assert torch.equal(again.scores.nan_to_num(), result.scores.nan_to_num())


def test_deeplift_equals_the_class_on_the_same_forward(bert):
    model, tok = bert
    result = Explainer(model, tok).attribute(TEXT, method="deeplift", target=0, aggregate="none")
    enc, x, base, special = _inputs(model, tok, TEXT)

    class Forward(torch.nn.Module):  # DeepLift needs the module that holds the activations
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, embeds):
            return _forward(model, enc)(embeds)

    expected = saliency_fast.DeepLift(Forward()).attribute(x, base, target=0)
    # the Explainer runs GELU as our fused op: it must get the rescale rule too
    assert rel_diff(result.scores[0, ~special], expected[0, ~special]) <= 1e-5


def test_grad_cam_is_the_token_weighted_last_block(bert):
    model, tok = bert
    result = Explainer(model, tok).attribute(TEXT, method="grad_cam", target=1)
    enc, x, _, special = _inputs(model, tok, TEXT)
    block = model.bert.encoder.layer[-1]
    seen = {}
    handle = block.register_forward_hook(lambda m, i, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        logit = _forward(model, enc)(x)[0, 1]
    finally:
        handle.remove()
    act = seen["h"]
    (grad,) = torch.autograd.grad(logit, act)
    expected = torch.relu((grad.mean(1, keepdim=True) * act).sum(-1))[0].detach()
    assert rel_diff(result.scores[0, ~special], expected[~special]) <= 1e-5


def test_gradient_shap_is_repeatable_with_a_seed(bert):
    model, tok = bert
    explainer = Explainer(model, tok)
    first = explainer.attribute(TEXT, method="gradient_shap", target=0, n_samples=4, stdevs=0.01, seed=3)
    second = explainer.attribute(TEXT, method="gradient_shap", target=0, n_samples=4, stdevs=0.01, seed=3)
    other = explainer.attribute(TEXT, method="gradient_shap", target=0, n_samples=4, stdevs=0.01, seed=4)
    assert torch.equal(first.scores.nan_to_num(), second.scores.nan_to_num())
    assert not torch.equal(first.scores.nan_to_num(), other.scores.nan_to_num())


def test_new_methods_reject_bad_options_and_generation(bert):
    model, tok = bert
    explainer = Explainer(model, tok)
    with pytest.raises(TypeError, match="n_steps"):
        explainer.attribute(TEXT, method="lime", n_steps=4)
    with pytest.raises(TypeError, match="seed must be an int"):
        explainer.attribute(TEXT, method="kernel_shap", seed="x")
    gpt2, gpt2_tok = tiny_gpt2()
    with pytest.raises(ValueError, match="not available for generation"):
        Explainer(gpt2, gpt2_tok).attribute_generation("a b c", max_new_tokens=2, method="lime")


def test_perturbation_forwards_run_each_text_at_its_own_length(bert, monkeypatch):
    """The forward of the perturbation methods cuts each row's trailing padding: rows of a padded
    batch of texts of three lengths run in three forwards, and score what the padded forward does."""
    from saliency_fast.hf import explainer as explainer_module

    model, tok = bert
    explainer = Explainer(model, tok)
    texts = ["good", "the movie was surprisingly good", "not bad at all"]
    task = explainer._make_task(choices=None, reference=None, labels=None)
    units = task.encode(texts)
    rows, _ = task.plan(units, explainer.predict(task, units), None)
    batch = explainer._pad(units)
    embeds = explainer.embedding(batch.input_ids).detach().repeat(2, 1, 1)  # perturbed copies: rows repeat
    index = torch.tensor([r.index for r in rows]).repeat(2)
    args = (batch.attention_mask.repeat(2, 1), batch.token_type_ids.repeat(2, 1), None, index, torch.zeros_like(index),
            None)
    with torch.no_grad():
        padded = explainer_module._score_forward(task, "prob", embeds, *args)
        widths = []
        plain = explainer_module._score_forward
        monkeypatch.setattr(explainer_module, "_score_forward",
                            lambda task, kind, e, *rest: widths.append(e.shape[1]) or plain(task, kind, e, *rest))
        cut = explainer_module._score_forward_by_length(task, "prob", embeds, *args)
    assert sorted(widths) == sorted(set(batch.lengths)) and len(widths) == 3
    torch.testing.assert_close(cut, padded, rtol=1e-5, atol=1e-6)
