"""InnerProductIndex: every backend returns the exact top-k (proponents and opponents) with scores
in the vectors' own dtype, streamed in chunks; bad arguments are clear errors."""

from __future__ import annotations

import pytest
import torch

from saliency_fast.influence.search import InnerProductIndex


@pytest.mark.parametrize("backend", ["torch", "faiss-cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_top_k_both_ends(backend, dtype):
    if backend == "faiss-cpu":
        pytest.importorskip("faiss")
    torch.manual_seed(0)
    vectors, queries = torch.randn(300, 24, dtype=dtype), torch.randn(7, 24, dtype=dtype)
    index = InnerProductIndex(backend=backend)
    for chunk in vectors.split(64):
        index.add(chunk)
    scores = queries @ vectors.T
    for largest in (True, False):
        found, values = index.search(queries, 10, largest=largest)
        expected = scores.topk(10, dim=1, largest=largest)
        assert torch.equal(found, expected.indices)
        assert values.dtype == dtype
        torch.testing.assert_close(values, expected.values)
    assert index.ntotal == 300 and index.backend == backend


def test_bad_arguments():
    index = InnerProductIndex(backend="torch")
    index.add(torch.randn(5, 3))
    with pytest.raises(ValueError, match="k must be between 1 and the number of indexed rows"):
        index.search(torch.randn(1, 3), 6)
    with pytest.raises(ValueError, match="vectors must have 3 columns"):
        index.add(torch.randn(2, 4))
    with pytest.raises(ValueError, match="backend must be one of"):
        InnerProductIndex(backend="annoy")
