"""Layer attribution through the Explainer and the generation engine: block resolution, results
against captum's layer methods run on the same forward (whole input, and each generated token's
prefix alone), ``layers="all"`` against each layer alone, metadata, and bad input."""

from __future__ import annotations

import functools

import captum.attr
import pytest
import torch

import saliency_fast
from saliency_fast import Explainer
from saliency_fast.hf import generation
from saliency_fast.hf import layers as hf_layers
from tests.test_methods_models import relative_difference
from tests.tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

TOL = 1e-5
TEXTS = ["the movie was surprisingly good", "bad"]
PROMPT, FORCED = "the movie was", "the movie was good and not very great"


@functools.cache
def bert():
    return tiny_bert("classification", num_hidden_layers=3)


@functools.cache
def gpt2():
    return tiny_gpt2(n_layer=3)


def _bert_inputs(text):
    """Word embeddings of ``text``, the pad baseline (specials keep their embedding), special mask
    and the forward over embeddings the Explainer attributes (logits; captum picks the class)."""
    model, tok = bert(), bert_tokenizer()
    enc = tok(text, return_tensors="pt")
    emb = model.get_input_embeddings()
    x = emb(enc["input_ids"]).detach()
    special = torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
    base = torch.where(special[..., None], x, emb(torch.full_like(enc["input_ids"], tok.pad_token_id)).detach())

    def forward(embeds):
        n = embeds.shape[0]
        return model(inputs_embeds=embeds, attention_mask=enc["attention_mask"].expand(n, -1),
                     token_type_ids=enc["token_type_ids"].expand(n, -1)).logits

    return x, base, special[0], forward


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN where the other is NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _kwargs(method):
    return {"n_steps": 12} if method == "integrated_gradients" else {}


# ---------------------------------------------------------------------------- resolution


def test_blocks_are_found_by_the_number_of_hidden_layers():
    names = [name for name, _ in hf_layers.transformer_blocks(bert())]
    assert names == [f"bert.encoder.layer.{i}" for i in range(3)]
    names = [name for name, _ in hf_layers.transformer_blocks(gpt2()[0])]
    assert names == [f"transformer.h.{i}" for i in range(3)]


def test_layers_resolve_by_index_name_and_all():
    model = bert()
    blocks = model.bert.encoder.layer
    assert hf_layers.resolve_layers(model, layer=-1) == (["layer 2"], [blocks[2]])
    assert hf_layers.resolve_layers(model, layer="bert.encoder.layer.1.output") == (
        ["bert.encoder.layer.1.output"], [blocks[1].output])
    labels, modules = hf_layers.resolve_layers(model, layers="all")
    assert labels == ["layer 0", "layer 1", "layer 2"] and modules == list(blocks)
    assert hf_layers.resolve_layers(model, layers=[2, "bert.embeddings"])[0] == ["layer 2", "bert.embeddings"]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"layer": 3}, ValueError, "out of range"),
    ({"layer": "bert.nothing"}, ValueError, "is not a module"),
    ({"layer": True}, TypeError, "block index"),
    ({"layer": 1.0}, TypeError, "block index"),
    ({"layers": "some"}, ValueError, "'all'"),
    ({"layers": []}, ValueError, "non-empty list"),
    ({"layers": [0, -3]}, ValueError, "twice"),
    ({"layer": 0, "layers": "all"}, ValueError, "exactly one"),
    ({}, ValueError, "exactly one"),
])
def test_bad_layers_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        hf_layers.resolve_layers(bert(), **kwargs)


# ------------------------------------------------------------------------------- Explainer


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_explainer_layer_equals_captum(method):
    """``layer=K`` per token at block K's output: captum's layer method on the same forward, then
    the L2 norm over the hidden dim (IG with captum's path, ``layer_path="layer"``)."""
    model = bert()
    block = model.bert.encoder.layer[1]
    extra = {"layer_path": "layer"} if method == "integrated_gradients" else {}
    results = Explainer(model, bert_tokenizer(), batch_size=2).attribute(
        TEXTS, method=method, target=1, layer=1, **extra, **_kwargs(method))
    for text, result in zip(TEXTS, results):
        x, base, special, forward = _bert_inputs(text)
        if method == "integrated_gradients":
            theirs = captum.attr.LayerIntegratedGradients(forward, block).attribute(x, base, target=1, n_steps=12)
        else:
            theirs = captum.attr.LayerGradientXActivation(
                forward, block, multiply_by_inputs=method == "input_x_gradient").attribute(x, target=1)
        expected = theirs.detach()[0].norm(dim=-1)
        assert result.layer_names == ["layer 1"] and result.metadata["layers"] == ["layer 1"]
        assert result.layer_scores.shape == (1, 1, x.shape[1])
        assert _same(result.layer_scores[:, 0], result.scores)
        assert torch.isnan(result.scores[0, special]).all()
        assert relative_difference(result.scores[0, ~special], expected[~special]) <= TOL


@pytest.mark.parametrize("method,path", [("saliency", None), ("input_x_gradient", None),
                                         ("integrated_gradients", "inputs"), ("integrated_gradients", "layer")])
def test_explainer_all_layers_equal_each_layer_alone(method, path):
    explainer = Explainer(bert(), bert_tokenizer(), batch_size=2)
    extra = {} if path is None else {"layer_path": path}
    together = explainer.attribute(TEXTS, method=method, layers="all", aggregate="sum", **extra, **_kwargs(method))
    # (past the last block only CLS, a special token, reaches the classifier: compare whole maps)
    alone = [explainer.attribute(TEXTS, method=method, layer=k, aggregate="sum", **extra, **_kwargs(method))
             for k in range(3)]
    for i, t in enumerate(together):
        expected = torch.stack([per_layer[i].scores[0] for per_layer in alone])
        assert torch.equal(torch.isnan(t.layer_scores[0]), torch.isnan(expected))
        assert relative_difference(t.layer_scores[0].nan_to_num(), expected.nan_to_num()) <= TOL
    result = together[0]
    assert result.layer_names == ["layer 0", "layer 1", "layer 2"]
    assert result.layer_scores.shape == (1, 3, len(result.tokens))
    assert _same(result.scores, result.layer_scores[:, -1])
    if method == "integrated_gradients":
        assert result.metadata["layer_path"] == path and result.metadata["n_steps"] == 12


def test_explainer_layer_path_completeness():
    """captum's path sums to F(x) - F(b) at every block; the input path only approximately."""
    explainer = Explainer(bert(), bert_tokenizer())
    exact = explainer.attribute(TEXTS[0], method="integrated_gradients", layers="all", layer_path="layer", n_steps=24)
    curved = explainer.attribute(TEXTS[0], method="integrated_gradients", layers="all", n_steps=24)
    assert exact.metadata["completeness_error"][0] <= 1e-5
    assert curved.metadata["completeness_error"][0] > exact.metadata["completeness_error"][0]


def test_explainer_auto_steps_on_captums_path():
    result = Explainer(bert(), bert_tokenizer()).attribute(
        TEXTS[0], method="integrated_gradients", target=1, layer=1, layer_path="layer", n_steps="auto", rtol=1e-3)
    x, base, _, forward = _bert_inputs(TEXTS[0])
    with torch.no_grad():
        change = float(forward(x)[0, 1] - forward(base)[0, 1])
    assert result.metadata["n_steps"] in (3, 7, 15, 31, 63, 127)
    assert result.metadata["completeness_error"][0] <= 1e-3 * abs(change) + 1e-7


@pytest.mark.parametrize("head", ["multiple_choice", "tagging"])
def test_other_tasks_give_one_map_per_row(head):
    """Multiple choice (one unit per choice) and tagging (one row per position) batch rows their own
    way; every row's layer map still equals attributing that layer alone."""
    model = tiny_bert(head, num_hidden_layers=2)
    explainer = Explainer(model, bert_tokenizer(), batch_size=3)
    options = {"choices": ["yes", "no way"], "target": "all"} if head == "multiple_choice" else {}
    together = explainer.attribute(TEXTS[0], method="input_x_gradient", layers="all", aggregate="sum", **options)
    alone = explainer.attribute(TEXTS[0], method="input_x_gradient", layer=0, aggregate="sum", **options)
    together, alone = (together, alone) if head == "multiple_choice" else ([together], [alone])
    for t, a in zip(together, alone):
        assert t.layer_scores.shape == (len(t.targets), 2, len(t.tokens))
        assert _same(t.layer_scores[:, 0], a.scores)


def test_explainer_dot_is_attribution_dot_activation():
    model = bert()
    x, base, special, forward = _bert_inputs(TEXTS[0])
    result = Explainer(model, bert_tokenizer()).attribute(
        TEXTS[0], method="saliency", target=0, layer=0, aggregate="dot")
    block = model.bert.encoder.layer[0]
    expected = captum.attr.LayerGradientXActivation(forward, block).attribute(x, target=0).detach()[0].sum(-1)
    assert relative_difference(result.scores[0, ~special], expected[~special]) <= TOL


@pytest.mark.parametrize("kwargs,error,match", [
    ({"method": "occlusion", "layer": 0}, TypeError, "unexpected keyword"),
    ({"method": "saliency", "layer": 0, "aggregate": "none"}, ValueError, "aggregate='none'"),
    ({"method": "integrated_gradients", "layer_path": "layer"}, ValueError, "give layer= or layers="),
    ({"method": "saliency", "layer": 0, "layer_path": "layer"}, ValueError, "integrated_gradients only"),
    ({"method": "integrated_gradients", "layer": 0, "layer_path": "straight"}, ValueError, "layer_path must be"),
    ({"method": "integrated_gradients", "layer": 0, "n_steps": "auto"}, ValueError, "exact only for path='layer'"),
    ({"method": "saliency", "layer": "bert.pooler"}, ValueError, "per-token layer scores"),
    ({"method": "attention", "layers": "all"}, ValueError, "layers must be one of"),
    ({"method": "smoothgrad", "layer": 0}, TypeError, "unexpected keyword"),
])
def test_explainer_bad_layer_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        Explainer(bert(), bert_tokenizer()).attribute(TEXTS[0], **kwargs)


# ------------------------------------------------------------------------------ generation


def _prefix_forward(model, token):
    return lambda embeds: model(inputs_embeds=embeds).logits[:, -1, token]


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_generation_layer_equals_captum_on_each_prefix(method):
    """One causal pass for all generated tokens = captum's layer method run on each prefix alone."""
    model, tok = gpt2()
    extra = {"layer_path": "layer"} if method == "integrated_gradients" else {}
    result = Explainer(model, tok).attribute_generation(
        PROMPT, generated_text=FORCED, method=method, layer=2, aggregate="sum", baseline="zero", **extra,
        **_kwargs(method))
    ids = tok(FORCED)["input_ids"]
    n_prompt = len(tok(PROMPT)["input_ids"])
    embeds = model.get_input_embeddings()(torch.tensor([ids])).detach()
    block = model.transformer.h[2]
    assert len(result.targets) == len(ids) - n_prompt >= 3
    for row, position in enumerate(range(n_prompt, len(ids))):
        prefix = embeds[:, :position]
        forward = _prefix_forward(model, ids[position])
        if method == "integrated_gradients":
            theirs = captum.attr.LayerIntegratedGradients(forward, block).attribute(
                prefix, torch.zeros_like(prefix), n_steps=12)
        else:
            theirs = captum.attr.LayerGradientXActivation(
                forward, block, multiply_by_inputs=method == "input_x_gradient").attribute(prefix)
        # a sum over the hidden dim can cancel to rounding noise (the gradient into a LayerNorm
        # sums to ~0): its error is measured against the sum of magnitudes
        values = theirs.detach()[0]
        error = (result.scores[row, :position] - values.sum(-1)).abs().max()
        assert error <= TOL * values.abs().sum(-1).max()
        assert torch.isnan(result.scores[row, position:]).all()
    if method == "integrated_gradients":
        assert max(result.metadata["completeness_error"]) <= 1e-4


@pytest.mark.parametrize("method,path", [("saliency", None), ("integrated_gradients", "inputs"),
                                         ("integrated_gradients", "layer")])
def test_generation_all_layers_equal_each_layer_alone(method, path):
    model, tok = gpt2()
    explainer = Explainer(model, tok)
    extra = {} if path is None else {"layer_path": path}
    # a small token budget: several target chunks (engine options go to the engine itself)
    run = functools.partial(generation.attribute_generation, explainer, PROMPT, generated_text=FORCED, method=method,
                            max_batch_tokens=16, progress=False, **extra, **_kwargs(method))
    together = run(layers="all")
    assert together.layer_scores.shape == (len(together.targets), 3, len(together.tokens))
    assert together.layer_names == ["layer 0", "layer 1", "layer 2"]
    assert _same(together.scores, together.layer_scores[:, -1])
    for k in range(3):
        alone = run(layer=k)
        keep = ~torch.isnan(alone.scores)
        assert torch.equal(keep, ~torch.isnan(together.layer_scores[:, k]))
        assert relative_difference(together.layer_scores[:, k][keep], alone.scores[keep]) <= TOL
    if method == "integrated_gradients":
        assert together.metadata["layer_path"] == path and together.metadata["layers"] == together.layer_names


def test_generation_input_path_matches_the_methods_class_on_each_prefix():
    model, tok = gpt2()
    result = Explainer(model, tok).attribute_generation(
        PROMPT, generated_text=FORCED, method="integrated_gradients", layer=1, aggregate="sum", baseline="zero",
        n_steps=12)
    ids = tok(FORCED)["input_ids"]
    n_prompt = len(tok(PROMPT)["input_ids"])
    embeds = model.get_input_embeddings()(torch.tensor([ids])).detach()
    for row, position in enumerate(range(n_prompt, len(ids))):
        prefix = embeds[:, :position]
        ours = saliency_fast.LayerIntegratedGradients(_prefix_forward(model, ids[position]), model.transformer.h[1]) \
            .attribute(prefix, torch.zeros_like(prefix), n_steps=12, path="inputs")
        assert relative_difference(result.scores[row, :position], ours[0].sum(-1)) <= TOL


def test_generation_bad_layer_options():
    model, tok = gpt2()
    explainer = Explainer(model, tok)
    with pytest.raises(ValueError, match="n_steps='auto' is not available"):
        explainer.attribute_generation(PROMPT, generated_text=FORCED, method="integrated_gradients", layer=0,
                                       layer_path="layer", n_steps="auto")
    with pytest.raises(TypeError, match="unexpected keyword"):
        explainer.attribute_generation(PROMPT, generated_text=FORCED, method="occlusion", layer=0)
    with pytest.raises(ValueError, match="out of range"):
        explainer.attribute_generation(PROMPT, generated_text=FORCED, method="saliency", layer=5)


# ------------------------------------------------------------------------------ views, files


def test_layers_heatmap_and_files(tmp_path):
    model, tok = gpt2()
    result = Explainer(model, tok).attribute_generation(PROMPT, generated_text=FORCED, method="saliency",
                                                         layers="all")
    fig = result.plot(kind="layers", path=tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 0
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(result.targets)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == result.layer_names
    back = saliency_fast.load(result.save(tmp_path / "result.json"))
    assert back.layer_names == result.layer_names and back.metadata["layers"] == result.layer_names
    assert _same(back.layer_scores, result.layer_scores)
    plain = Explainer(bert(), bert_tokenizer()).attribute(TEXTS[0])
    with pytest.raises(ValueError, match="needs layer scores"):
        plain.plot(kind="layers")
