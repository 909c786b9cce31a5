"""DiscretizedIntegratedGradients: equal to inseq's DIG where both compute the same thing, exact
on linear models, a batch equal to its examples one at a time, and clear errors."""

from __future__ import annotations

import pytest
import torch

from saliency_fast import DiscretizedIntegratedGradients
from saliency_fast.methods.dig import dig_attribute_embeddings
from tests.tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

STRATEGIES = ["greedy", "maxcount"]


@pytest.fixture(scope="module")
def gpt2():
    model, tok = tiny_gpt2()
    return model, tok, model.get_input_embeddings().weight


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(), bert_tokenizer()


def last_logits(model):
    return lambda embeds: model(inputs_embeds=embeds).logits[:, -1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equals_inseq_dig(gpt2, strategy):
    from inseq.attr.feat.ops.discretized_integrated_gradients import DiscretetizedIntegratedGradients
    from inseq.attr.feat.ops.monotonic_path_builder import MonotonicPathBuilder

    model, tok, embedding = gpt2
    forward = last_logits(model)
    ids = torch.tensor([[17, 40, 93, 150, 6, 71]])
    base = torch.full_like(ids, tok.pad_token_id)
    # inseq's own graph builder, unwrapped from its pickle cache
    graph = MonotonicPathBuilder.compute_embeddings_knn.__wrapped__(
        vocabulary_embeddings=embedding.detach(), n_neighbors=15, n_jobs=1)
    peer = DiscretetizedIntegratedGradients(forward)
    peer.path_builder = MonotonicPathBuilder(embedding.detach(), graph, [])
    theirs, their_delta = peer.attribute(ids, baselines=base, target=7, n_steps=10, method=strategy,
                                         return_convergence_delta=True)

    ours, delta = DiscretizedIntegratedGradients(
        forward, embedding, strategy=strategy, n_neighbors=15, n_steps=10, baseline_token_id=tok.pad_token_id,
        convention="inseq",
    ).attribute(ids, target=7, return_convergence_delta=True)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        change = forward(embedding[ids])[0, 7] - forward(embedding[base])[0, 7]
    torch.testing.assert_close(delta, ours.sum().reshape(1) - change, rtol=1e-5, atol=1e-6)
    # inseq passes (inputs, baselines) where captum expects (start, end): its delta adds the change
    torch.testing.assert_close(their_delta, ours.sum().reshape(1) + change, rtol=1e-5, atol=1e-6)


def test_linear_model_gets_exact_per_dimension_attributions(gpt2):
    _, tok, embedding = gpt2
    weights = torch.randn(6, embedding.shape[1])

    def linear(embeds):
        return (embeds * weights).sum((1, 2))

    ids = torch.tensor([[20, 31, 45, 2, 99, 150], [7, 8, 9, 10, 11, 12]])
    special = (tok.eos_token_id,)  # id 2
    dig = DiscretizedIntegratedGradients(linear, embedding, n_neighbors=10, n_steps=8, factor=1,
                                         baseline_token_id=tok.pad_token_id, special_token_ids=special)
    attributions, delta = dig.attribute(ids, return_convergence_delta=True)
    with torch.no_grad():
        start = torch.where((ids == 2).unsqueeze(-1), embedding[ids], embedding[tok.pad_token_id])
        expected = weights * (embedding[ids] - start)  # the steps of any path sum to x - start
    torch.testing.assert_close(attributions, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(attributions[0, 3], torch.zeros(embedding.shape[1]))  # special token
    torch.testing.assert_close(delta, torch.zeros(2), atol=1e-5, rtol=0)
    assert dig.last_n_points == (8 + 1) * 2 + 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_equals_one_example_at_a_time(bert, strategy):
    model, tok = bert
    enc = tok(["a good movie", "terrible acting, sadly", "it was fine"], return_tensors="pt", padding=True)

    def forward(embeds, mask):
        return model(inputs_embeds=embeds, attention_mask=mask).logits

    dig = DiscretizedIntegratedGradients(forward, model.get_input_embeddings().weight, strategy=strategy,
                                         n_neighbors=20, n_steps=6, baseline_token_id=tok.pad_token_id,
                                         special_token_ids=tok.all_special_ids)
    target = [0, 2, 1]
    batch, batch_delta = dig.attribute(enc["input_ids"], target=target, internal_batch_size=9,
                                       additional_forward_args=(enc["attention_mask"],),
                                       return_convergence_delta=True)
    for i in range(3):
        one, one_delta = dig.attribute(enc["input_ids"][i : i + 1], target=target[i],
                                       additional_forward_args=(enc["attention_mask"][i : i + 1],),
                                       return_convergence_delta=True)
        torch.testing.assert_close(batch[i : i + 1], one, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(batch_delta[i : i + 1], one_delta, rtol=1e-4, atol=1e-5)
    special = torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
    assert bool((batch[special] == 0).all()) and bool((batch[~special] != 0).any())


def test_embeddings_as_inputs_and_per_call_overrides(gpt2):
    model, tok, embedding = gpt2
    forward = last_logits(model)
    ids = torch.tensor([[30, 31, 32, 33]])
    dig = DiscretizedIntegratedGradients(forward, embedding, n_neighbors=12, n_steps=5,
                                         baseline_token_id=tok.pad_token_id)
    from_ids = dig.attribute(ids, target=4, method="maxcount", n_steps=7)
    from_embeds = dig.attribute(embedding[ids].detach(), input_ids=ids, target=4, method="maxcount", n_steps=7)
    assert torch.equal(from_ids, from_embeds)
    assert dig.last_n_points == 9
    explicit = dig_attribute_embeddings(forward, ids, embedding, tok.pad_token_id, target=4, strategy="maxcount",
                                        n_steps=7, n_neighbors=12)
    assert torch.equal(explicit.attributions, from_ids) and explicit.convergence_delta is None
    assert explicit.n_points == 9
    chunked = dig.attribute(ids, target=4, method="maxcount", n_steps=7, internal_batch_size=2)
    torch.testing.assert_close(chunked, from_ids, rtol=1e-5, atol=1e-7)
    other_baseline = dig.attribute(ids, baselines=tok.mask_token_id, target=4)
    assert torch.equal(other_baseline, dig.attribute(ids, baseline_ids=torch.full_like(ids, tok.mask_token_id),
                                                     target=4))


def bad_calls(embedding):
    ids = torch.tensor([[30, 31, 32]])
    return [
        (dict(inputs=ids, baselines=None), dict(baseline_token_id=None), ValueError, "a baseline is needed"),
        (dict(inputs=ids, baselines=torch.zeros(1, 3, 32)), {}, TypeError, "baselines must be token ids"),
        (dict(inputs=ids, baselines=0, baseline_ids=ids), {}, ValueError, "not both"),
        (dict(inputs=ids, baselines=torch.zeros(2, 5, dtype=torch.long)), {}, ValueError, "baselines must be one"),
        (dict(inputs=ids[0]), {}, ValueError, r"inputs must have shape \(batch, seq_len\)"),
        (dict(inputs=ids + 1000), {}, ValueError, r"input_ids must lie in \[0, 200\)"),
        (dict(inputs=ids, n_steps=0), {}, ValueError, "n_steps must be >= 1"),
        (dict(inputs=ids, method="random"), {}, ValueError, "strategy must be one of"),
        (dict(inputs=embedding[ids].detach()), {}, ValueError, "DIG needs the token ids"),
        (dict(inputs=embedding[ids].detach() + 1, input_ids=ids), {}, ValueError,
         "inputs must be the word embeddings of input_ids"),
        (dict(inputs=ids, input_ids=ids), {}, ValueError, "do not pass input_ids as well"),
        (dict(inputs=ids, target=500), {}, ValueError, "target index 500 is out of range"),
        (dict(inputs=ids, internal_batch_size=0), {}, ValueError, "internal_batch_size must be at least 1"),
        (dict(inputs=ids, return_convergence_delta="yes"), {}, TypeError, "return_convergence_delta must be a bool"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_input(gpt2, case):
    model, tok, embedding = gpt2
    call, init, error, match = bad_calls(embedding)[case]
    init = dict(dict(n_neighbors=5, n_steps=3, baseline_token_id=tok.pad_token_id), **init)
    dig = DiscretizedIntegratedGradients(last_logits(model), embedding, **init)
    with pytest.raises(error, match=match):
        dig.attribute(**call)


def test_bad_constructor_arguments(gpt2):
    model, _, embedding = gpt2
    with pytest.raises(ValueError, match="convention must be one of"):
        DiscretizedIntegratedGradients(last_logits(model), embedding, convention="captum")
    with pytest.raises(ValueError, match="embedding_matrix must be a tensor of shape"):
        DiscretizedIntegratedGradients(last_logits(model), embedding[0])
    with pytest.raises(TypeError, match="embedding_matrix must be a torch.Tensor"):
        DiscretizedIntegratedGradients(last_logits(model), embedding.tolist())
    with pytest.raises(TypeError, match="forward_func must be callable"):
        DiscretizedIntegratedGradients(None, embedding)
