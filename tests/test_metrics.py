"""Faithfulness metrics: hand-computed values on a bag-of-words linear classifier whose weights make
one token decisive, batching invariance, Explainer.evaluate against the model run by hand, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from saliency_fast import Explainer, IntegratedGradients, metrics
from tiny_models import bert_tokenizer, tiny_bert

PAD, CLS, SEP = 0, 1, 2
# log-odds of class 1 contributed by each token id: token 5 is decisive, the others barely matter
TOKEN_WEIGHTS = {PAD: 0.0, CLS: 0.0, SEP: 0.0, 5: 3.0, 6: 0.5, 7: -0.2, 8: 0.1, 9: 0.0}
SENTENCE = torch.tensor([CLS, 8, 5, 7, 6, 9, SEP])  # 5 attributable tokens, the decisive one in the middle
ATTRIBUTABLE = torch.tensor([False, True, True, True, True, True, False])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class BagOfWords(torch.nn.Module):
    """Two-class linear classifier over summed word embeddings: logit_1 - logit_0 = sum of the
    tokens' weights, so p(class 1) = sigmoid(sum of weights)."""

    def __init__(self, dim: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(10, dim)
        self.readout = torch.nn.Linear(dim, 2, bias=False)
        with torch.no_grad():
            # a random embedding per token, then a readout that maps it to the wanted weight
            self.readout.weight.zero_()
            self.readout.weight[1, 0] = 1.0
            for token, weight in TOKEN_WEIGHTS.items():
                self.embedding.weight[token, 0] = weight

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.readout(embeds.sum(1))

    def predict_proba(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([self(self.embedding(s)[None])[0] for s in sequences]).softmax(-1)


def ig_scores(model: BagOfWords, ids: torch.Tensor) -> torch.Tensor:
    """Integrated gradients from the PAD embedding, summed over the embedding dim."""
    x = model.embedding(ids)[None].detach()
    base = torch.where(ATTRIBUTABLE[None, :, None], model.embedding(torch.full_like(ids, PAD))[None], x).detach()
    attr = IntegratedGradients(model).attribute(x, baselines=base, target=1, n_steps=8)
    return attr.sum(-1)[0]


def expected(kept: list[int]) -> float:
    """p(class 1) of a sequence made of ``kept`` token ids, by hand."""
    return sigmoid(sum(TOKEN_WEIGHTS[t] for t in kept))


def test_the_decisive_token_ranks_first_and_the_metrics_take_the_hand_computed_values():
    model = BagOfWords()
    scores = ig_scores(model, SENTENCE)
    assert int(scores.argmax()) == 2  # token 5
    top = metrics.top_k_mask(scores, ATTRIBUTABLE, 20)  # floor(20 % of 5) = 1 token
    assert top.tolist() == [False, False, True, False, False, False, False]

    full = expected(SENTENCE.tolist())
    found = metrics.faithfulness(model.predict_proba, [SENTENCE], [scores], baseline_id=PAD,
                                 attributable=[ATTRIBUTABLE])
    assert found.prediction.tolist() == [1]
    # k = 20 %: the decisive token alone
    without_5 = expected([CLS, 8, 7, 6, 9, SEP])
    only_5 = expected([CLS, 5, SEP])
    assert float(found.at("comprehensiveness", 20)) == pytest.approx(full - without_5, abs=1e-6)
    assert float(found.at("sufficiency", 20)) == pytest.approx(full - only_5, abs=1e-6)
    assert float(found.at("log_odds", 20)) == pytest.approx(math.log(without_5) - math.log(full), abs=1e-6)
    # k = 50 %: floor(2.5) = 2 tokens, 5 then 6; k = 1, 5, 10 %: no token: nothing deleted or
    # replaced, and only the special tokens kept for sufficiency
    without_56 = expected([CLS, 8, 7, 9, SEP])
    assert float(found.at("comprehensiveness", 50)) == pytest.approx(full - without_56, abs=1e-6)
    assert float(found.at("sufficiency", 50)) == pytest.approx(full - expected([CLS, 5, 6, SEP]), abs=1e-6)
    for k in (1, 5, 10):
        assert float(found.at("comprehensiveness", k)) == pytest.approx(0.0, abs=1e-9)
        assert float(found.at("log_odds", k)) == pytest.approx(0.0, abs=1e-9)
        assert float(found.at("sufficiency", k)) == pytest.approx(full - expected([CLS, SEP]), abs=1e-6)
    assert float(found.aopc("comprehensiveness")) == pytest.approx(
        (full - without_5 + full - without_56) / 5, abs=1e-6)
    # the single-metric functions agree with the table
    assert float(metrics.comprehensiveness(model.predict_proba, [SENTENCE], [scores], attributable=[ATTRIBUTABLE])) \
        == pytest.approx(full - without_5, abs=1e-6)
    assert float(metrics.sufficiency(model.predict_proba, [SENTENCE], [scores], attributable=[ATTRIBUTABLE])) \
        == pytest.approx(full - only_5, abs=1e-6)
    assert float(metrics.log_odds(model.predict_proba, [SENTENCE], [scores], baseline_id=PAD,
                                  attributable=[ATTRIBUTABLE])) == pytest.approx(
        math.log(without_5) - math.log(full), abs=1e-6)
    assert float(metrics.aopc("sufficiency", model.predict_proba, [SENTENCE], [scores],
                              attributable=[ATTRIBUTABLE])) == pytest.approx(found.aopc("sufficiency").item())


def test_a_faithful_ranking_scores_better_than_its_reverse():
    model = BagOfWords()
    scores = ig_scores(model, SENTENCE)
    good = metrics.faithfulness(model.predict_proba, [SENTENCE], [scores], baseline_id=PAD, attributable=[ATTRIBUTABLE])
    bad = metrics.faithfulness(model.predict_proba, [SENTENCE], [-scores], baseline_id=PAD, attributable=[ATTRIBUTABLE])
    assert float(good.aopc("comprehensiveness")) > float(bad.aopc("comprehensiveness"))
    assert float(good.aopc("sufficiency")) < float(bad.aopc("sufficiency"))
    assert float(good.aopc("log_odds")) < float(bad.aopc("log_odds"))


def test_the_predicted_class_stays_the_one_of_the_unperturbed_input():
    """Deleting the decisive token flips the prediction; the metric still reads the original class."""
    model = BagOfWords()
    ids = torch.tensor([5, 7, 7, 7, 7])  # sum 2.2: class 1; without token 5: -0.8, class 0
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    comp = metrics.comprehensiveness(model.predict_proba, [ids], [scores])
    assert float(comp) == pytest.approx(sigmoid(2.2) - sigmoid(-0.8), abs=1e-6)


def test_batching_does_not_change_the_values_and_examples_keep_their_order():
    model = BagOfWords()
    sentences = [SENTENCE, torch.tensor([6, 5]), torch.tensor([9, 8, 7, 6, 5, 6, 7, 8, 9, 5])]
    scores = [torch.randn(len(s)) for s in sentences]
    one = metrics.faithfulness(model.predict_proba, sentences, scores, baseline_id=PAD, batch_size=1)
    many = metrics.faithfulness(model.predict_proba, sentences, scores, baseline_id=PAD, batch_size=100)
    alone = [metrics.faithfulness(model.predict_proba, [s], [c], baseline_id=PAD) for s, c in zip(sentences, scores)]
    for metric in metrics.METRICS:
        torch.testing.assert_close(one.values[metric], many.values[metric])
        torch.testing.assert_close(many.values[metric], torch.cat([a.values[metric] for a in alone]))


def test_top_k_breaks_ties_by_position_and_skips_unattributable_tokens():
    scores = torch.tensor([9.0, 1.0, 1.0, 1.0, float("nan")])
    mask = torch.tensor([False, True, True, True, False])
    assert metrics.top_k_mask(scores, mask, 50).tolist() == [False, True, False, False, False]
    assert metrics.top_k_mask(scores, mask, 100).tolist() == [False, True, True, True, False]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"input_ids": torch.tensor([1, 2])}, TypeError, "input_ids"),
    ({"scores": [torch.zeros(3)]}, ValueError, "one entry per token"),
    ({"scores": [torch.tensor([float("nan"), 0.0])]}, ValueError, "NaN"),
    ({"ks": [0]}, ValueError, "percentages"),
    ({"ks": [150]}, ValueError, "percentages"),
    ({"baseline_id": None}, ValueError, "baseline_id"),
    ({"metrics": ["accuracy"]}, ValueError, "metric"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"attributable": [torch.ones(2)]}, TypeError, "bool"),
])
def test_bad_input_is_named(kwargs, error, match):
    model = BagOfWords()
    args = {"input_ids": [torch.tensor([5, 6])], "scores": [torch.zeros(2)], "baseline_id": PAD, **kwargs}
    with pytest.raises(error, match=match):
        metrics.faithfulness(model.predict_proba, **args)


def test_predict_proba_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match="predict_proba"):
        metrics.faithfulness(lambda seqs: torch.zeros(3), [torch.tensor([5, 6])], [torch.zeros(2)], baseline_id=PAD)


# ------------------------------------------------------------------------------ Explainer.evaluate

TEXTS = ["the movie was surprisingly good and fun", "bad", "a long and rather boring film, not worth it"]


def _by_hand(model, tok, result, k: int, baseline_id: int):
    """Comprehensiveness, sufficiency and log-odds of one result, running the HF model directly."""
    ids = torch.tensor(result.token_ids)
    mask = result.mask[0]
    scores = result.scores[0]
    n_top = int(int(mask.sum()) * k / 100)
    order = torch.where(mask, scores, torch.tensor(float("-inf"))).argsort(descending=True, stable=True)[:n_top]
    top = torch.zeros_like(mask)
    top[order] = True

    def prob(seq):
        with torch.no_grad():
            return model(input_ids=seq[None]).logits.softmax(-1)[0]

    full = prob(ids)
    y = int(full.argmax())
    replaced = torch.where(top, torch.full_like(ids, baseline_id), ids)
    return {
        "comprehensiveness": float(full[y] - prob(ids[~top])[y]),
        "sufficiency": float(full[y] - prob(ids[top | ~mask])[y]),
        "log_odds": float(prob(replaced)[y].log() - full[y].log()),
    }


def test_explainer_evaluate_is_a_table_of_the_metrics_computed_by_hand():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok, batch_size=2)
    table = explainer.evaluate(TEXTS, methods={"saliency": {}, "integrated_gradients": {"n_steps": 8}}, k=20,
                               baseline="mask")
    assert table["method"] == ["saliency", "integrated_gradients"]
    assert set(table) == {"method", "n_texts", "seconds", "log_odds@20", "comprehensiveness@20", "sufficiency@20",
                          "aopc_log_odds", "aopc_comprehensiveness", "aopc_sufficiency"}
    assert all(len(column) == 2 for column in table.values())
    for row, (method, kwargs) in enumerate([("saliency", {}), ("integrated_gradients", {"n_steps": 8})]):
        results = explainer.attribute(TEXTS, method=method, baseline="mask", aggregate="sum", progress=False, **kwargs)
        hand = [_by_hand(model, tok, r, 20, tok.mask_token_id) for r in results]
        for metric in metrics.METRICS:
            want = sum(h[metric] for h in hand) / len(hand)
            assert table[f"{metric}@20"][row] == pytest.approx(want, abs=1e-5)
        if method == "saliency":  # the AOPC by hand once: the table reads every k the same way
            aopc = [[_by_hand(model, tok, r, k, tok.mask_token_id)["comprehensiveness"] for k in metrics.AOPC_KS]
                    for r in results]
            assert table["aopc_comprehensiveness"][row] == pytest.approx(
                sum(sum(a) / len(a) for a in aopc) / len(aopc), abs=1e-5)


def test_explainer_evaluate_bad_input():
    model, tok = tiny_bert("classification"), bert_tokenizer()
    explainer = Explainer(model, tok)
    with pytest.raises(ValueError, match="baseline"):
        explainer.evaluate(TEXTS, ["saliency"], baseline="zero")
    with pytest.raises(ValueError, match="method must be one of"):
        explainer.evaluate(TEXTS, ["no_such_method"])
    with pytest.raises(TypeError, match="methods"):
        explainer.evaluate(TEXTS, 3)
    with pytest.raises(ValueError, match="at least one"):
        explainer.evaluate(TEXTS, [])
    with pytest.raises(ValueError, match="classifier"):
        Explainer(tiny_bert("base"), tok).evaluate(TEXTS, ["saliency"])
