"""Contrastive targets: ``contrast_prob_diff`` / ``contrast_logit_diff`` against inseq's step functions
(decoder-only and encoder-decoder generation) and against the difference of two plain targets
(classification)."""

from __future__ import annotations

import pytest
import torch

import saliency_fast
from tiny_models import SEQ2SEQ_FAMILIES, bert_tokenizer, tiny_bert, tiny_gpt2, tiny_seq2seq

PROMPT = "the movie was"
FULL = "the movie was good w5 w7 bad i w12"
CONTRAST = "the movie was bad w5 w9 good i w3"


@pytest.fixture(scope="module")
def explainer():
    model, tok = tiny_gpt2()
    return saliency_fast.Explainer(model, tok)


def rows_close(ours: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    assert torch.equal(torch.isnan(ours), torch.isnan(expected))
    ours, expected = torch.nan_to_num(ours), torch.nan_to_num(expected)
    assert float((ours - expected).abs().max() / expected.abs().max()) <= rtol


@pytest.mark.parametrize("ours_name,inseq_name", [("contrast_prob_diff", "contrast_prob_diff"),
                                                  ("contrast_logit_diff", "contrast_logits_diff")])
@pytest.mark.parametrize("method", ["saliency", "input_x_gradient"])
def test_generation_matches_inseq(explainer, ours_name, inseq_name, method):
    inseq = pytest.importorskip("inseq")
    model, tok = tiny_gpt2()  # inseq configures the tokenizer it is given: its own copy
    with pytest.warns(UserWarning, match="force the original inputs"):
        out = inseq.load_model(model, method, tokenizer=tok).attribute(
            PROMPT, FULL, attributed_fn=inseq_name, contrast_targets=CONTRAST, show_progress=False)
    expected = out.sequence_attributions[0].target_attributions.permute(1, 0, 2).float()  # [T, N, D]
    ours = explainer.attribute_generation(PROMPT, generated_text=FULL, method=method, target=ours_name,
                                          contrast_targets=CONTRAST, aggregate="none", progress=False)
    rows_close(ours.scores.abs() if method == "saliency" else ours.scores, expected)  # inseq's saliency is |grad|
    assert ours.metadata["contrast_targets"] == CONTRAST.split()[3:]
    assert ours.metadata["target"] == ours_name


def test_generation_contrast_equals_difference_of_plain_targets(explainer):
    """Gradients are linear: grad(p(a) - p(b)) is grad p(a) minus grad p(b), where b is read at the
    same position (a forced text whose tokens are the contrast's reads them)."""
    kwargs = dict(method="input_x_gradient", aggregate="sum", progress=False)
    diff = explainer.attribute_generation(PROMPT, generated_text=FULL, target="contrast_logit_diff",
                                          contrast_targets=CONTRAST, **kwargs)
    plain = explainer.attribute_generation(PROMPT, generated_text=FULL, target="logit", **kwargs)
    # the contrast's own logits read at the original prefixes: one prefix at a time
    model, ids = explainer.model, diff.token_ids
    contrast_ids = explainer.tokenizer(CONTRAST)["input_ids"]
    for row, t in enumerate(range(3, len(ids))):
        embeds = explainer.embedding(torch.tensor([ids[:t]])).detach().requires_grad_(True)
        model(inputs_embeds=embeds).logits[0, -1, contrast_ids[t]].backward()
        contrast = (embeds * embeds.grad).sum(-1)[0]
        torch.testing.assert_close(diff.scores[row, :t], plain.scores[row, :t] - contrast, rtol=1e-4, atol=1e-6)


SOURCE, TARGET, CONTRAST_TARGET = "the movie was good", "le film est bon", "un chat est mauvais"


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
@pytest.mark.parametrize("ours_name,inseq_name", [("contrast_prob_diff", "contrast_prob_diff"),
                                                  ("contrast_logit_diff", "contrast_logits_diff")])
def test_encoder_decoder_matches_inseq(family, ours_name, inseq_name):
    """Source and target attributions of p(token) - p(contrast token) at the original prefix, the
    contrast aligned 1:1 with the target (three of its four words differ)."""
    inseq = pytest.importorskip("inseq")
    peer_model, peer_tok = tiny_seq2seq(family)  # inseq configures the model and tokenizer it is given
    with pytest.warns(UserWarning, match="force the original inputs"):
        out = inseq.load_model(peer_model, "input_x_gradient", tokenizer=peer_tok).attribute(
            SOURCE, TARGET, attribute_target=True, attributed_fn=inseq_name, contrast_targets=CONTRAST_TARGET,
            show_progress=False)
    seq = out.sequence_attributions[0]
    expected = torch.cat([seq.source_attributions, seq.target_attributions], 0).permute(1, 0, 2).float()
    model, tok = tiny_seq2seq(family)
    ours = saliency_fast.Explainer(model, tok, exclude_special_tokens=False).attribute_generation(
        SOURCE, generated_text=TARGET, method="input_x_gradient", target=ours_name, contrast_targets=CONTRAST_TARGET,
        aggregate="none", progress=False, target_batch_size=2)  # chunks of targets: the pairs split with them
    differing = torch.nan_to_num(expected).abs().amax((1, 2)) > 0
    assert int(differing.sum()) == 3  # rows where the contrast token is the target have no gradient
    rows_close(torch.cat([ours.source_scores, ours.scores], 1), expected)
    assert ours.metadata["contrast_targets"] == tok.convert_ids_to_tokens(
        tok(text_target=CONTRAST_TARGET)["input_ids"])[: len(ours.targets)]


def test_encoder_decoder_contrast_errors_are_clear():
    explainer = saliency_fast.Explainer(*tiny_seq2seq("bart"))
    with pytest.raises(ValueError, match="fewer than the"):
        explainer.attribute_generation(SOURCE, generated_text=TARGET, target="contrast_prob_diff",
                                       contrast_targets="un chat", progress=False)
    with pytest.raises(ValueError, match="contrast_targets is empty"):
        explainer.attribute_generation(SOURCE, generated_text=TARGET, target="contrast_prob_diff",
                                       contrast_targets=" ", progress=False)


@pytest.mark.parametrize("kind,base", [("contrast_prob_diff", "prob"), ("contrast_logit_diff", "logit")])
def test_classification_contrast_is_the_difference_of_the_two_classes(kind, base):
    model = tiny_bert()
    explainer = saliency_fast.Explainer(model, bert_tokenizer())
    texts = ["a great movie", "not good at all"]
    kwargs = dict(method="input_x_gradient", aggregate="sum")
    diff = explainer.attribute(texts, target=0, score=kind, contrast_targets=2, **kwargs)
    first = explainer.attribute(texts, target=0, score=base, **kwargs)
    second = explainer.attribute(texts, target=2, score=base, **kwargs)
    for d, a, b in zip(diff, first, second):
        torch.testing.assert_close(d.scores, a.scores - b.scores, rtol=1e-4, atol=1e-6, equal_nan=True)
        assert d.metadata["contrast_target"] == "LABEL_2" and d.metadata["target"] == kind


def test_contrast_errors_are_clear(explainer):
    with pytest.raises(ValueError, match="needs contrast_targets"):
        explainer.attribute_generation(PROMPT, generated_text=FULL, target="contrast_prob_diff", progress=False)
    with pytest.raises(ValueError, match="contrast_targets applies"):
        explainer.attribute_generation(PROMPT, generated_text=FULL, target="prob", contrast_targets=CONTRAST)
    with pytest.raises(ValueError, match="fewer than"):
        explainer.attribute_generation(PROMPT, generated_text=FULL, target="contrast_prob_diff",
                                       contrast_targets="the movie", progress=False)
    classifier = saliency_fast.Explainer(tiny_bert(), bert_tokenizer())
    with pytest.raises(ValueError, match="needs contrast_targets"):
        classifier.attribute("a movie", score="contrast_logit_diff")
    with pytest.raises(ValueError, match="out of range"):
        classifier.attribute("a movie", score="contrast_logit_diff", contrast_targets=7)
    with pytest.raises(ValueError, match="contrast_targets applies"):
        classifier.attribute("a movie", score="logit", contrast_targets=1)
