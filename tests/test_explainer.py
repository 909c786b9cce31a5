"""The Explainer end to end: against captum and hand-written references on tiny random models,
batches equal to one text at a time, the real all-MiniLM-L6-v2, and every bad input."""

from __future__ import annotations

import functools

import captum.attr
import pytest
import torch
import torch.nn.functional as F
import transformers

from saliency_fast import Explainer
from saliency_fast.hf.packaged_model import default_model
from tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

TEXTS = ["the movie was surprisingly good", "bad", "a long and rather boring film, not worth the ticket at all"]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@functools.cache
def minilm():
    return default_model()


def _inputs(model, tok, text, baseline_id=None):
    """Word embeddings of ``text``, its baseline (specials keep their embedding) and model kwargs."""
    enc = tok(text, return_tensors="pt")
    emb = model.get_input_embeddings()
    x = emb(enc["input_ids"]).detach()
    special = torch.isin(enc["input_ids"], torch.tensor(tok.all_special_ids))
    base_id = tok.pad_token_id if baseline_id is None else baseline_id
    base = torch.where(special[..., None], x, emb(torch.full_like(enc["input_ids"], base_id)).detach())
    return enc, x, base, special[0]


def _forward(model, enc):
    """Forward over inputs_embeds for a batch of copies of one text (captum expands the batch)."""
    def forward(embeds):
        n = embeds.shape[0]
        return model(inputs_embeds=embeds, attention_mask=enc["attention_mask"].expand(n, -1),
                     token_type_ids=enc["token_type_ids"].expand(n, -1)).logits
    return forward


# ----------------------------------------------------------------------- against captum


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_classification_equals_captum_for_a_batch_of_different_lengths(method):
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok, batch_size=2)
    kwargs = {"n_steps": 16} if method == "integrated_gradients" else {}
    results = explainer.attribute(TEXTS, method=method, target=1, aggregate="none", **kwargs)
    for text, result in zip(TEXTS, results):
        enc, x, base, special = _inputs(model, tok, text)
        forward = _forward(model, enc)
        if method == "saliency":
            expected = captum.attr.Saliency(forward).attribute(x, target=1, abs=False)
        elif method == "input_x_gradient":
            expected = captum.attr.InputXGradient(forward).attribute(x, target=1)
        else:
            expected = captum.attr.IntegratedGradients(forward).attribute(x, baselines=base, target=1, n_steps=16)
        got = result.scores
        assert got.shape == (1, x.shape[1], x.shape[2])
        assert torch.isnan(got[0, special]).all() and not result.mask[0, special].any()
        assert rel_diff(got[0, ~special], expected[0, ~special]) <= 1e-5
        assert result.targets == ["LABEL_1"] and result.target_ids == [1]


def test_integrated_gradients_reports_completeness_and_steps():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    result = Explainer(model, tok).attribute(TEXTS[0], method="integrated_gradients", n_steps=32, aggregate="sum")
    enc, x, base, _ = _inputs(model, tok, TEXTS[0])
    forward = _forward(model, enc)
    target = result.target_ids[0]
    with torch.no_grad():
        delta_f = float(forward(x)[0, target] - forward(base)[0, target])
    total = float(result.scores.nansum())
    assert result.metadata["n_steps"] == 32
    assert result.metadata["completeness_error"][0] == pytest.approx(abs(total - delta_f), abs=1e-6)
    assert result.metadata["completeness_error"][0] < 1e-3 * abs(delta_f)


# -------------------------------------------------------------- batches = one at a time


def _gpt2_classifier():
    model_lm, tok = tiny_gpt2()
    config = transformers.GPT2Config(**{**model_lm.config.to_dict(), "num_labels": 2})
    return transformers.GPT2ForSequenceClassification(config).eval(), tok


IG2 = {"method": "integrated_gradients", "n_steps": 2}
CASES = {  # model and tokenizer, Explainer options, attribute options
    "classify": (lambda: (tiny_bert("classification"), bert_tokenizer()), {}, IG2),
    "decoder_classify": (_gpt2_classifier, {}, IG2),
    "tagging": (lambda: (tiny_bert("tagging"), bert_tokenizer()), {}, {"method": "saliency"}),  # a row per token
    "multiple_choice": (lambda: (tiny_bert("multiple_choice"), bert_tokenizer()), {},
                        {**IG2, "choices": ["yes it is", "no", "maybe later today"], "target": "all", "score": "prob"}),
    "similarity": (lambda: (tiny_bert("base"), bert_tokenizer()), {"reference": "a good film"}, IG2),
    "zero-shot": (lambda: (tiny_bert("base"), bert_tokenizer()), {"labels": ["good", "bad", "long"]}, IG2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_of_different_lengths_equals_one_text_at_a_time(case):
    make, init, call = CASES[case]
    model, tok = make()
    explainer = Explainer(model, tok, batch_size=2, **init)
    texts = ["the movie was good", "bad", "a very terrible movie and it was not good"]
    batched = explainer.attribute(texts, **call)
    for text, together in zip(texts, batched):
        alone = explainer.attribute(text, **call)
        pairs = zip(together, alone) if isinstance(alone, list) else [(together, alone)]
        for a, b in pairs:
            assert a.tokens == b.tokens and a.targets == b.targets
            torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-7, equal_nan=True)
            assert torch.isfinite(a.scores[a.mask]).all()


# ---------------------------------------------------------------- task-specific references


def test_tagging_has_one_row_per_position_equal_to_its_gradient():
    model, tok = tiny_bert("tagging"), bert_tokenizer()
    result = Explainer(model, tok).attribute("john lives in new york", aggregate="none")
    enc, x, _, special = _inputs(model, tok, "john lives in new york")
    positions = (~special).nonzero().flatten().tolist()
    assert result.scores.shape[0] == len(positions)
    x.requires_grad_(True)
    logits = model(inputs_embeds=x, **{k: v for k, v in enc.items() if k != "input_ids"}).logits[0]
    for row, (position, tag) in enumerate(zip(positions, result.target_ids)):
        assert tag == int(logits[position].argmax())
        (grad,) = torch.autograd.grad(logits[position, tag], x, retain_graph=True)
        assert rel_diff(result.scores[row, ~special], grad[0, ~special]) <= 1e-5
        assert result.targets[row].startswith(result.tokens[position])


def test_multiple_choice_prob_gradient_equals_the_joint_softmax_over_choices():
    model, tok = tiny_bert("multiple_choice"), bert_tokenizer()
    prompt, choices = "where is the cat?", ["on the mat", "in the big old house", "away"]
    result = Explainer(model, tok).attribute(prompt, choices=choices, target=1, score="prob", aggregate="none")
    assert result.targets == [choices[1]] and result.tokens[-2] == "house"
    enc = tok([prompt] * 3, choices, padding=True, return_tensors="pt")
    emb = model.get_input_embeddings()
    x = emb(enc["input_ids"]).detach().requires_grad_(True)
    logits = model(inputs_embeds=x[None], attention_mask=enc["attention_mask"][None],
                   token_type_ids=enc["token_type_ids"][None]).logits[0]
    (grad,) = torch.autograd.grad(logits.softmax(-1)[1], x)
    n = len(result.tokens)
    keep = result.mask[0]
    assert rel_diff(result.scores[0, keep], grad[1, :n][keep]) <= 1e-5
    assert result.metadata["choice_probs"][choices[1]] == pytest.approx(float(logits.softmax(-1)[1]), rel=1e-5)


def test_multiple_choice_default_target_is_the_predicted_choice():
    model, tok = tiny_bert("multiple_choice"), bert_tokenizer()
    result = Explainer(model, tok).attribute("which one?", choices=["red", "green", "blue"])
    probs = result.metadata["choice_probs"]
    assert result.targets == [max(probs, key=probs.get)] == [result.metadata["prediction"]]


def test_similarity_is_the_gradient_of_the_cosine_to_the_reference():
    model, tok = tiny_bert("base"), bert_tokenizer()
    result = Explainer(model, tok).attribute("a great movie", reference="a good film", aggregate="none")
    enc, x, _, special = _inputs(model, tok, "a great movie")
    ref = model(**tok("a good film", return_tensors="pt")).last_hidden_state[0].mean(0).detach()
    x.requires_grad_(True)
    pooled = model(inputs_embeds=x, **{k: v for k, v in enc.items() if k != "input_ids"}).last_hidden_state[0].mean(0)
    cos = F.cosine_similarity(pooled, ref, dim=0)
    (grad,) = torch.autograd.grad(cos, x)
    assert result.targets == ["similarity"]
    assert result.metadata["similarity"] == pytest.approx(float(cos), rel=1e-5)
    assert rel_diff(result.scores[0, ~special], grad[0, ~special]) <= 1e-5


def test_occlusion_is_leave_one_out_with_the_baseline_token():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    text = "the movie was surprisingly good"
    result = Explainer(model, tok).attribute(text, method="occlusion", target=0)
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        full = model(**enc).logits[0, 0]
        for i in range(1, enc["input_ids"].shape[1] - 1):
            ids = enc["input_ids"].clone()
            ids[0, i] = tok.pad_token_id
            occluded = model(ids, token_type_ids=enc["token_type_ids"]).logits[0, 0]
            assert float(result.scores[0, i]) == pytest.approx(float(full - occluded), abs=1e-6)
    assert result.metadata["aggregate"] is None


def test_attention_view_is_the_cls_row_of_the_last_layer_averaged_over_heads():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok)
    result = explainer.attribute("the movie was good", method="attention")
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(**tok("the movie was good", return_tensors="pt"), output_attentions=True).attentions
    last = attentions[-1][0].mean(0)[0]
    keep = result.mask[0]
    torch.testing.assert_close(result.scores[0, keep], last[keep], rtol=1e-5, atol=1e-7)
    assert result.layer_scores.shape == (1, 2, len(result.tokens))
    mean = explainer.attribute("the movie was good", method="attention", layers="mean")
    expected = torch.stack([a[0].mean(0)[0] for a in attentions]).mean(0)
    torch.testing.assert_close(mean.scores[0, keep], expected[keep], rtol=1e-5, atol=1e-7)


def test_sequential_ig_moves_one_token_at_a_time():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    text = "the movie was good"
    result = Explainer(model, tok).attribute(text, method="sequential_integrated_gradients", target=2,
                                              n_steps=8, aggregate="none")
    enc, x, base, special = _inputs(model, tok, text)
    forward = _forward(model, enc)
    ig = captum.attr.IntegratedGradients(forward)
    for i in (~special).nonzero().flatten().tolist():
        only_i = x.clone()
        only_i[0, i] = base[0, i]
        expected = ig.attribute(x, baselines=only_i, target=2, n_steps=8)
        assert rel_diff(result.scores[0, i], expected[0, i]) <= 1e-5


def test_smoothgrad_without_noise_is_saliency_and_vargrad_is_zero():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok)
    saliency = explainer.attribute(TEXTS[0], aggregate="sum")
    smooth = explainer.attribute(TEXTS[0], method="smoothgrad", aggregate="sum", nt_samples=3, stdevs=0.0)
    var = explainer.attribute(TEXTS[0], method="vargrad", aggregate="sum", nt_samples=3, stdevs=0.0)
    torch.testing.assert_close(smooth.scores, saliency.scores, equal_nan=True)
    assert float(var.scores.nan_to_num().abs().max()) < 1e-12


def test_aggregations_reduce_the_embedding_dim():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok)
    full = explainer.attribute(TEXTS[0], aggregate="none")
    enc, x, _, _ = _inputs(model, tok, TEXTS[0])
    expected = {
        "sum": full.scores.sum(-1), "l2": full.scores.norm(dim=-1), "abs_sum": full.scores.abs().sum(-1),
        "dot": (full.scores * x).sum(-1),
    }
    for how, value in expected.items():
        torch.testing.assert_close(explainer.attribute(TEXTS[0], aggregate=how).scores, value, equal_nan=True)


def test_baselines_by_name_and_as_tensors_agree():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok)
    emb = model.get_input_embeddings()
    text = TEXTS[0]
    n = len(tok(text)["input_ids"])
    run = functools.partial(explainer.attribute, text, method="integrated_gradients", n_steps=4, aggregate="sum")
    mask_rows = emb(torch.full((n,), tok.mask_token_id)).detach()
    torch.testing.assert_close(run(baseline="mask").scores, run(baseline=mask_rows).scores, equal_nan=True)
    torch.testing.assert_close(run(baseline="zero").scores, run(baseline=torch.zeros(32)).scores, equal_nan=True)
    assert not torch.allclose(run(baseline="unk").scores.nan_to_num(), run(baseline="pad").scores.nan_to_num())
    assert run(baseline=mask_rows).metadata["baseline"] == "tensor"


def test_special_tokens_can_be_attributed():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    result = Explainer(model, tok, exclude_special_tokens=False).attribute(TEXTS[0], method="integrated_gradients",
                                                                            n_steps=4)
    assert result.mask.all() and torch.isfinite(result.scores).all()
    assert result.tokens[0] == "[CLS]"


def test_result_carries_word_ids_and_metadata():
    model, tok = tiny_bert("classification", num_labels=2, id2label={0: "neg", 1: "pos"}), bert_tokenizer()
    result = Explainer(model, tok).attribute("unbelievable tokenization", target="pos")
    assert result.targets == ["pos"] and result.word_ids[0] is None
    assert len(set(w for w in result.word_ids if w is not None)) == 2
    words = result.aggregate_words("sum")
    assert len(words.tokens) < len(result.tokens)
    meta = result.metadata
    assert meta["task"] == "classify" and meta["method"] == "saliency" and meta["target"] == "logit"
    assert set(meta["label_probs"]) == {"neg", "pos"} and meta["backend"] in ("native", "reference")


def test_labels_rename_the_classes_of_a_head():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    result = Explainer(model, tok, labels=["a", "b", "c"]).attribute(TEXTS[0], target="c")
    assert result.targets == ["c"]


# ------------------------------------------------------------- the real all-MiniLM-L6-v2


def test_minilm_zero_shot_sentiment_points_at_the_sentiment_words():
    model, tok = minilm()
    explainer = Explainer(model, tok, labels=["positive", "negative"])
    text = "This movie was incredibly bad, I hated every second of it."
    for method, kwargs in (("saliency", {}), ("integrated_gradients", {"n_steps": 16})):
        result = explainer.attribute(text, method=method, **kwargs)
        assert result.metadata["prediction"] == "negative" and result.targets == ["negative"]
        top = {token for token, _ in result.top_k(2)[0]}
        assert top == {"bad", "hated"}, (method, result.top_k(5))


def test_minilm_similarity_matches_sentence_embeddings_and_finds_the_shared_topic():
    model, tok = minilm()
    text, reference = "A man is playing a guitar on the street.", "Someone is making music."
    result = Explainer(model, tok).attribute(text, reference=reference, method="integrated_gradients", n_steps=16)
    with torch.no_grad():
        def embed(t):
            enc = tok(t, return_tensors="pt")
            return model(**enc).last_hidden_state[0].mean(0)
        expected = F.cosine_similarity(embed(text), embed(reference), dim=0)
    assert result.metadata["similarity"] == pytest.approx(float(expected), rel=1e-5)
    assert result.top_k(1)[0][0][0] == "guitar"
    assert result.metadata["completeness_error"][0] < 1e-3


# -------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def classifier():
    return Explainer(tiny_bert("classification"), bert_tokenizer())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"texts": ""}, ValueError, "texts is empty"),
        ({"texts": ["ok", "  "]}, ValueError, r"texts\[1\] is empty"),
        ({"texts": []}, TypeError, "texts must be a string or a non-empty list"),
        ({"texts": ["ok", 3]}, TypeError, r"texts\[1\] must be a string"),
        ({"texts": "word " * 200}, ValueError, "202 tokens long but the model accepts at most 128"),
        ({"method": "magic"}, ValueError, "method must be one of"),  # lime exists now
        ({"target": 3}, ValueError, r"target=3 is out of range: expected a class index in 0..2"),
        ({"target": "happy"}, ValueError, "target='happy' is not a known class"),
        ({"target": 1.5}, TypeError, "target must be a class index"),
        ({"aggregate": "mean"}, ValueError, "aggregate must be one of"),
        ({"baseline": "random"}, ValueError, "baseline must be one of"),
        ({"baseline": 0}, TypeError, "baseline must be one of"),
        ({"baseline": torch.zeros(7)}, ValueError, r"baseline tensor must have shape \[32\]"),
        ({"baseline": torch.zeros(3, 32), "method": "integrated_gradients"}, ValueError, "baseline tensor has 3 rows"),
        ({"score": "margin"}, ValueError, "score must be one of"),
        ({"n_steps": 4}, TypeError, r"unexpected keyword arguments \['n_steps'\]"),
        ({"reference": "x"}, ValueError, "reference= does not apply"),
        ({"method": "attention", "layers": "first"}, ValueError, "layers must be one of"),
    ],
)
def test_bad_attribute_arguments(classifier, kwargs, error, match):
    kwargs = {"texts": "a fine text", **kwargs}
    with pytest.raises(error, match=match):
        classifier.attribute(**kwargs)


def test_bad_task_inputs():
    tok = bert_tokenizer()
    with pytest.raises(ValueError, match="choices is required"):
        Explainer(tiny_bert("multiple_choice"), tok).attribute("q?")
    with pytest.raises(ValueError, match="choices must be a list of at least 2"):
        Explainer(tiny_bert("multiple_choice"), tok).attribute("q?", choices=["only"])
    with pytest.raises(ValueError, match="target=5 is out of range: expected a choice index"):
        Explainer(tiny_bert("multiple_choice"), tok).attribute("q?", choices=["a", "b"], target=5)
    with pytest.raises(ValueError, match="reference is required"):
        Explainer(tiny_bert("base"), tok).attribute("text")
    with pytest.raises(ValueError, match="target must be None for similarity"):
        Explainer(tiny_bert("base"), tok, reference="r").attribute("text", target=0)
    with pytest.raises(ValueError, match="labels are required"):
        Explainer(tiny_bert("base"), tok, task="zero-shot").attribute("text")
    with pytest.raises(ValueError, match="labels must be distinct"):
        Explainer(tiny_bert("base"), tok, labels=["a", "a"])


def test_bad_constructor_arguments():
    tok = bert_tokenizer()
    with pytest.raises(TypeError, match="get_input_embeddings"):
        Explainer(torch.nn.Linear(2, 2), tok)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Explainer("bert", tok)
    with pytest.raises(TypeError, match="tokenizer must be"):
        Explainer(tiny_bert(), object())
    with pytest.raises(ValueError, match="task must be one of"):
        Explainer(tiny_bert(), tok, task="summarize")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        Explainer(tiny_bert(), tok, batch_size=0)
    with pytest.raises(ValueError, match="labels must name each of the model's 3 classes"):
        Explainer(tiny_bert(), tok, labels=["a", "b"])
    with pytest.raises(ValueError, match="label_template must be a string containing"):
        Explainer(tiny_bert("base"), tok, labels=["a", "b"], label_template="no slot")


def test_generation_entry_points_check_the_task_and_arguments():
    tok = bert_tokenizer()
    with pytest.raises(ValueError, match="attribute_generation needs a causal LM"):
        Explainer(tiny_bert(), tok).attribute_generation("hello", max_new_tokens=2)
    model, word_tok = tiny_gpt2()
    explainer = Explainer(model, word_tok)
    with pytest.raises(ValueError, match="use attribute_generation"):
        explainer.attribute("the movie")
    for kwargs, error, match in [
        ({"prompt": ""}, ValueError, "prompt is empty"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be an int >= 1"),
        ({"max_new_tokens": None}, ValueError, "give max_new_tokens"),
        ({"target": "score"}, ValueError, "target must be one of"),
        ({"method": "magic"}, ValueError, "method must be one of"),
        ({"aggregate": "avg"}, ValueError, "aggregate must be one of"),
        ({"baseline": "random"}, ValueError, "baseline must be one of"),
        ({"generated_text": 5}, TypeError, "generated_text must be a string"),
    ]:
        with pytest.raises(error, match=match):
            explainer.attribute_generation(**{"prompt": "the movie", "max_new_tokens": 2, **kwargs})


def test_non_finite_gradients_are_reported():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf|non-finite"):
        Explainer(model, tok).attribute("a fine text", target=0)


def test_smoothgrad_noise_is_repeatable_with_a_seed():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok)
    first = explainer.attribute(TEXTS[0], method="smoothgrad", seed=3)
    again = explainer.attribute(TEXTS[0], method="smoothgrad", seed=3)
    plain = explainer.attribute(TEXTS[0])
    torch.testing.assert_close(first.scores, again.scores, equal_nan=True)
    assert not torch.allclose(first.scores.nan_to_num(), plain.scores.nan_to_num())


def test_dig_equals_the_method_class_and_a_batch_equals_one_text_at_a_time():
    from saliency_fast import DiscretizedIntegratedGradients

    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok, batch_size=2)
    options = {"method": "discretized_integrated_gradients", "n_steps": 4, "n_neighbors": 20, "target": 1,
               "aggregate": "none"}
    batched = explainer.attribute(TEXTS, **options)
    for text, together in zip(TEXTS, batched):
        enc, _, _, special = _inputs(model, tok, text)
        dig = DiscretizedIntegratedGradients(_forward(model, enc), model.get_input_embeddings().weight, n_neighbors=20,
                                             n_steps=4, baseline_token_id=tok.pad_token_id,
                                             special_token_ids=tok.all_special_ids)
        expected, delta = dig.attribute(enc["input_ids"], target=1, return_convergence_delta=True)
        assert rel_diff(together.scores[0, ~special], expected[0, ~special]) <= 1e-5
        assert together.metadata["completeness_error"][0] == pytest.approx(abs(float(delta[0])), abs=1e-7)
    with pytest.raises(ValueError, match="baseline must be a token"):
        explainer.attribute(TEXTS[0], method="discretized_integrated_gradients", baseline="zero")
