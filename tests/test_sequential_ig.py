"""Sequential IG: equal to a naive loop of one captum IG per token, completeness per token, chunking
and masks that do not change the result, the Explainer's method name, bad input."""

from __future__ import annotations

import captum.attr
import pytest
import torch

from saliency_fast import Explainer, SequentialIntegratedGradients
from tiny_models import bert_tokenizer, tiny_bert


class TinyTransformer(torch.nn.Module):
    """One self-attention layer and a 3-class head: tokens interact, so moving one token changes
    the gradients of the others (a per-token loop is needed, not a single IG)."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, embeds: torch.Tensor, scale=None) -> torch.Tensor:
        hidden, _ = self.attention(embeds, embeds, embeds)
        out = self.head(torch.tanh(hidden + embeds).mean(1))
        return out if scale is None else out * scale[:, None]


def naive_sig(model, x, base, target, n_steps, args=None):
    """One captum IG per (example, token): only that token's baseline differs from the input."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        t = target[b] if isinstance(target, list) else target
        extra = None if args is None else (args[b : b + 1],)
        for s in range(x.shape[1]):
            start = x[b : b + 1].clone()
            start[0, s] = base[b, s]
            attr = captum.attr.IntegratedGradients(model).attribute(
                x[b : b + 1], baselines=start, target=t, n_steps=n_steps, method="gausslegendre",
                additional_forward_args=extra,
            )
            out[b, s] = attr[0, s]
    return out


def inputs(batch=2, tokens=5, dim=8):
    x = torch.randn(batch, tokens, dim, dtype=torch.float64)
    base = torch.randn(dim, dtype=torch.float64).expand(batch, tokens, dim).clone()  # one mask embedding
    return x, base


def test_equals_a_naive_loop_of_one_ig_per_token_with_per_example_targets_and_args():
    model = TinyTransformer().double()
    x, base = inputs()
    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)
    ours = SequentialIntegratedGradients(model).attribute(x, base, target=[0, 2], additional_forward_args=(scale,),
                                                          n_steps=16)
    torch.testing.assert_close(ours, naive_sig(model, x, base, [0, 2], 16, scale), rtol=1e-7, atol=1e-9)


def test_completeness_holds_per_token():
    model = TinyTransformer().double()
    x, base = inputs()
    attr, delta = SequentialIntegratedGradients(model).attribute(x, base, target=1, n_steps=64,
                                                                 return_convergence_delta=True)
    assert delta.shape == (2, 5)
    for b in range(2):
        for s in range(5):
            moved = x[b : b + 1].clone()
            moved[0, s] = base[b, s]
            with torch.no_grad():
                change = model(x[b : b + 1])[0, 1] - model(moved)[0, 1]
            assert float(attr[b, s].sum()) == pytest.approx(float(change), abs=1e-8)
            assert float(delta[b, s]) == pytest.approx(float(attr[b, s].sum() - change), abs=1e-12)
    assert float(delta.abs().max()) < 1e-8


@pytest.mark.parametrize("internal_batch_size", [1, 7, 30, None])
def test_chunking_over_tokens_and_steps_does_not_change_the_result(internal_batch_size):
    model = TinyTransformer()
    x, base = (t.float() for t in inputs(tokens=4))
    sig = SequentialIntegratedGradients(model)
    whole = sig.attribute(x, base, target=0, n_steps=6)
    chunked = sig.attribute(x, base, target=0, n_steps=6, internal_batch_size=internal_batch_size)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_forward_batches_stay_within_internal_batch_size():
    model = TinyTransformer()
    sizes = []

    def forward(embeds):
        sizes.append(embeds.shape[0])
        return model(embeds)

    x, base = (t.float() for t in inputs(tokens=5))
    SequentialIntegratedGradients(forward).attribute(x, base, target=0, n_steps=4, internal_batch_size=12)
    assert max(sizes) <= 12
    assert sum(sizes) == 2 * 5 * 4  # every (token, step) once
    assert max(sizes) == 12  # tokens of several sequences share a forward


def test_masked_tokens_get_zero_and_the_others_do_not_change():
    model = TinyTransformer().double()
    x, base = inputs()
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, True, True]])
    sig = SequentialIntegratedGradients(model)
    full = sig.attribute(x, base, target=1, n_steps=8)
    masked, delta = sig.attribute(x, base, target=1, n_steps=8, token_mask=mask, return_convergence_delta=True)
    assert bool((masked[~mask] == 0).all()) and bool((delta[~mask] == 0).all())
    torch.testing.assert_close(masked[mask], full[mask])


def test_explainer_method_equals_the_class_on_bert_with_special_tokens_kept():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    text = "a fine and quiet film"
    result = Explainer(model, tok).attribute(text, method="sequential_integrated_gradients", target=2,
                                             baseline="mask", aggregate="sum", n_steps=8, progress=False)
    enc = tok(text, return_tensors="pt")
    emb = model.get_input_embeddings()
    x = emb(enc["input_ids"]).detach()
    special = torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
    base = emb(torch.full_like(enc["input_ids"], tok.mask_token_id)).detach()

    def forward(embeds):
        n = embeds.shape[0]
        return model(inputs_embeds=embeds, attention_mask=enc["attention_mask"].expand(n, -1)).logits

    attr, delta = SequentialIntegratedGradients(forward).attribute(
        x, base, target=2, n_steps=8, token_mask=~special, return_convergence_delta=True)
    torch.testing.assert_close(result.scores[0][~special[0]], attr.sum(-1)[0][~special[0]], rtol=1e-4, atol=1e-6)
    assert result.scores[0][special[0]].isnan().all()
    assert result.metadata["completeness_error"][0] == pytest.approx(float(delta.abs().max()), abs=1e-5)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"inputs": (torch.zeros(1, 2, 3),)}, TypeError, "not a tuple"),
    ({"inputs": torch.zeros(2, 3)}, ValueError, r"\[batch, tokens, dim\]"),
    ({"token_mask": torch.ones(1, 2)}, TypeError, "token_mask"),
    ({"token_mask": torch.ones(1, 3, dtype=torch.bool)}, ValueError, "token_mask"),
    ({"n_steps": 0}, ValueError, "n_steps"),
    ({"internal_batch_size": 0}, ValueError, "internal_batch_size"),
])
def test_bad_input_is_named(kwargs, error, match):
    args = {"inputs": torch.zeros(1, 2, 3), **kwargs}
    with pytest.raises(error, match=match):
        SequentialIntegratedGradients(lambda e: e.sum((1, 2))).attribute(**args)
