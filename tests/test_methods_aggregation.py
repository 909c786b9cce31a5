"""``saliency_fast.aggregate`` over the embedding dim and ``saliency_fast.normalize`` of scores."""

from __future__ import annotations

import math

import pytest
import torch

import saliency_fast


def test_aggregations_over_the_last_dim():
    attr = torch.tensor([[[3.0, -4.0], [0.0, 0.0], [-1.0, 0.5]]])
    inputs = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [2.0, -2.0]]])
    expected = {
        "sum": [[-1.0, 0.0, -0.5]],
        "l2": [[5.0, 0.0, math.sqrt(1.25)]],
        "abs_sum": [[7.0, 0.0, 1.5]],
        "max_abs": [[4.0, 0.0, 1.0]],
        "dot": [[-5.0, 0.0, -3.0]],
    }
    for how, values in expected.items():
        out = saliency_fast.aggregate(attr, how, inputs=inputs if how == "dot" else None)
        assert torch.allclose(out, torch.tensor(values)), how
    assert saliency_fast.aggregate(attr, "none") is attr


def test_aggregate_maps_over_tuples():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 5)
    out = saliency_fast.aggregate((a, b), "dot", inputs=(a, b))
    assert torch.allclose(out[0], (a * a).sum(-1)) and torch.allclose(out[1], (b * b).sum(-1))


def test_aggregate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="how must be one of"):
        saliency_fast.aggregate(torch.ones(2, 3), "mean")
    with pytest.raises(ValueError, match="needs inputs"):
        saliency_fast.aggregate(torch.ones(2, 3), "dot")
    with pytest.raises(ValueError, match="must have attr's shape"):
        saliency_fast.aggregate(torch.ones(2, 3), "dot", inputs=torch.ones(2, 4))
    with pytest.raises(TypeError, match="attr must be a torch.Tensor"):
        saliency_fast.aggregate([1.0, 2.0], "sum")


def test_normalizations():
    scores = torch.tensor([[1.0, -3.0, 2.0], [0.5, 0.5, 1.0]])
    assert torch.allclose(saliency_fast.normalize(scores, "sum_to_one")[1], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.allclose(saliency_fast.normalize(scores, "max_abs")[0], torch.tensor([1 / 3, -1.0, 2 / 3]))
    assert torch.allclose(saliency_fast.normalize(scores, "l1")[0], torch.tensor([1 / 6, -0.5, 1 / 3]))
    l2 = saliency_fast.normalize(scores, "l2")
    assert torch.allclose(l2.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("how", ["sum_to_one", "max_abs", "l1", "l2"])
def test_normalize_keeps_zero_vectors_zero_and_nan_positions_nan(how):
    scores = torch.tensor([[0.0, 0.0, 0.0], [2.0, float("nan"), 2.0], [1.0, -1.0, 0.0]])
    out = saliency_fast.normalize(scores, how)
    assert torch.equal(out[0], torch.zeros(3))
    assert math.isnan(out[1, 1]) and torch.isfinite(out[1, [0, 2]]).all()
    assert torch.isfinite(out[2]).all()
    if how == "sum_to_one":
        assert torch.allclose(out[1, [0, 2]], torch.tensor([0.5, 0.5]))
        assert torch.equal(out[2], scores[2])  # zero sum: returned unchanged


def test_normalize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="how must be one of"):
        saliency_fast.normalize(torch.ones(3), "softmax")
    with pytest.raises(TypeError, match="floating dtype"):
        saliency_fast.normalize(torch.ones(3, dtype=torch.long), "l1")
