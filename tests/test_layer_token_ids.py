"""Token ids into layer methods (captum's text pattern): ``LayerIntegratedGradients(f, embeddings)``
and ``LayerGradientXActivation`` fed integer ``input_ids`` give captum's numbers and the numbers of
the float path (the same quantity from embeddings we compute ourselves), on a tiny BERT and GPT-2.
"""

from __future__ import annotations

import captum.attr
import pytest
import torch

import saliency_fast
from tests.tiny_models import tiny_bert, tiny_gpt2

TOL = 1e-5  # relative to the largest attribution: float32 rounding of the same sums


def _close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = TOL) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    scale = float(theirs.detach().abs().max())
    assert scale > 0  # a vanishing map would make the check empty
    assert float((ours - theirs.detach()).abs().max()) <= tol * scale


@pytest.fixture(scope="module")
def bert():
    model = tiny_bert("classification", seed=3)
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 9))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # a padded row
    baseline = torch.zeros_like(ids)  # [PAD]
    baseline[:, 0], baseline[:, -1] = 101, 102
    return model, ids, mask, baseline


def _bert_ids_forward(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def _bert_embeds_forward(model):
    return lambda embeds, mask: model(inputs_embeds=embeds, attention_mask=mask).logits


@pytest.mark.parametrize("multiply_by_inputs", [True, False])
def test_bert_layer_ig_on_token_ids_matches_captum_and_the_float_path(bert, multiply_by_inputs):
    model, ids, mask, baseline = bert
    embeddings = model.bert.embeddings
    word = embeddings.word_embeddings
    args = dict(baselines=baseline, target=torch.tensor([0, 1, 2]), additional_forward_args=(mask,), n_steps=16,
                return_convergence_delta=True)
    ours, delta = saliency_fast.LayerIntegratedGradients(
        _bert_ids_forward(model), embeddings, multiply_by_inputs=multiply_by_inputs).attribute(ids, **args)
    theirs, their_delta = captum.attr.LayerIntegratedGradients(
        _bert_ids_forward(model), embeddings, multiply_by_inputs=multiply_by_inputs).attribute(ids, **args)
    _close(ours, theirs)
    if multiply_by_inputs:  # captum's delta of unmultiplied gradients is another quantity
        assert float((delta - their_delta).abs().max()) <= 1e-4 * float(theirs.abs().sum(-1).max())
    # the float path: the same layer, its input being the word embeddings we look up ourselves
    with torch.no_grad():
        float_args = dict(args, baselines=word(baseline))
        floats, float_delta = saliency_fast.LayerIntegratedGradients(
            _bert_embeds_forward(model), embeddings, multiply_by_inputs=multiply_by_inputs,
        ).attribute(word(ids), **float_args)
    _close(ours, floats)
    assert torch.equal(delta, float_delta) or float((delta - float_delta).abs().max()) <= 1e-5


def test_bert_layer_grad_x_activation_on_token_ids_matches_captum_and_the_float_path(bert):
    model, ids, mask, _ = bert
    embeddings = model.bert.embeddings
    args = dict(target=1, additional_forward_args=(mask,))
    ours = saliency_fast.LayerGradientXActivation(_bert_ids_forward(model), embeddings).attribute(ids, **args)
    theirs = captum.attr.LayerGradientXActivation(_bert_ids_forward(model), embeddings).attribute(ids, **args)
    _close(ours, theirs)
    with torch.no_grad():
        floats = saliency_fast.LayerGradientXActivation(_bert_embeds_forward(model), embeddings).attribute(
            embeddings.word_embeddings(ids), **args)
    _close(ours, floats)


def test_gpt2_word_embedding_layer_ig_on_token_ids_equals_ig_on_embeddings_and_captum():
    model, _ = tiny_gpt2(seed=5)
    torch.manual_seed(2)
    ids = torch.randint(5, 200, (2, 7))
    baseline = torch.full_like(ids, 1)  # <pad>
    wte = model.transformer.wte
    next_token = torch.tensor([17, 42])

    def from_ids(ids):
        return model(input_ids=ids).logits[:, -1]

    def from_embeds(embeds):
        return model(inputs_embeds=embeds).logits[:, -1]

    args = dict(baselines=baseline, target=next_token, n_steps=20)
    with torch.no_grad():  # captum's layer methods work inside no_grad; so must ours
        ours = saliency_fast.LayerIntegratedGradients(from_ids, wte).attribute(ids, **args)
    theirs = captum.attr.LayerIntegratedGradients(from_ids, wte).attribute(ids, **args)
    _close(ours, theirs)
    floats = saliency_fast.IntegratedGradients(from_embeds).attribute(
        wte(ids).detach(), baselines=wte(baseline).detach(), target=next_token, n_steps=20)
    _close(ours, floats)
    grad_x = saliency_fast.LayerGradientXActivation(from_ids, wte).attribute(ids, target=next_token)
    float_grad_x = saliency_fast.InputXGradient(from_embeds).attribute(wte(ids).detach(), target=next_token)
    _close(grad_x, float_grad_x)


def test_token_ids_need_the_layer_path():
    model, _ = tiny_gpt2(seed=5)
    ids = torch.randint(5, 200, (1, 4))
    lig = saliency_fast.LayerIntegratedGradients(lambda i: model(input_ids=i).logits[:, -1], model.transformer.wte)
    with pytest.raises(TypeError, match="path='layer'"):
        lig.attribute(ids, target=3, path="inputs")


def test_gradient_methods_still_reject_token_ids():
    model, _ = tiny_gpt2(seed=5)
    ids = torch.randint(5, 200, (1, 4))
    with pytest.raises(TypeError, match="floating dtype"):
        saliency_fast.Saliency(lambda i: model(input_ids=i).logits[:, -1]).attribute(ids, target=3)
