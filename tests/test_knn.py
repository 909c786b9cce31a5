"""Nearest-vocabulary search (saliency_fast.knn): backends agree with each other and with the
plain exact search of the reference, ties go by index, the caches behave, bad input is refused."""

from __future__ import annotations

import pytest
import torch

import saliency_fast
from saliency_fast import knn, reference

CPU_BACKENDS = ["torch", "faiss-cpu"]


@pytest.fixture
def vocab():
    return torch.randn(1500, 24)


def exact(embedding, words, k):
    return torch.stack([reference.dig_exact_neighbors(embedding, int(w), k) for w in words])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_neighbors_equal_exact_search(vocab, backend):
    words = torch.randint(0, vocab.shape[0], (40,))
    found = knn.NeighborIndex(vocab, 25, backend).neighbors(words)
    assert found.shape == (40, 25)
    assert torch.equal(found, exact(vocab, words, 25))
    assert not (found == words.unsqueeze(1)).any()  # a word is not its own neighbour


def test_backends_agree_on_random_queries():
    vocab, queries = torch.randn(3000, 32), torch.randn(64, 32)
    results = [knn.search(vocab, queries, 40, backend) for backend in CPU_BACKENDS]
    assert torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][0], results[1][0])
    direct = (vocab.double().unsqueeze(0) - queries.double().unsqueeze(1)).square().sum(-1)
    assert torch.equal(results[0][1], torch.sort(direct, dim=-1, stable=True).indices[:, :40])
    assert bool((results[0][0][:, 1:] >= results[0][0][:, :-1]).all())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_equal_distances_break_by_index(backend):
    # rows 3, 7, 9 and 12 are one vector: seen from row 0 they tie, and the lower index comes first
    vocab = torch.randn(20, 8)
    vocab[[7, 9, 12]] = vocab[3].clone()
    vocab[0] = vocab[3] + 0.01
    found = knn.NeighborIndex(vocab, 4, backend).neighbors(torch.tensor([0, 9]))
    assert found[0].tolist() == [3, 7, 9, 12]
    assert found[1, :3].tolist() == [3, 7, 12]  # itself excluded, its duplicates first


def test_k_is_clamped_to_the_rest_of_the_vocabulary():
    index = knn.NeighborIndex(torch.randn(6, 4), 50, "torch")
    assert index.k == 5
    lists = index.neighbors(torch.arange(6))
    for w, row in enumerate(lists.tolist()):
        assert sorted(row) == [v for v in range(6) if v != w]


def test_neighbors_are_searched_once_per_word(vocab, monkeypatch):
    index = knn.NeighborIndex(vocab, 10, "torch")
    searched = []
    original = index._search_words
    monkeypatch.setattr(index, "_search_words", lambda words: searched.append(words.tolist()) or original(words))
    first = index.neighbors(torch.tensor([[5, 9], [9, 5]]))
    again = index.neighbors(torch.tensor([9, 11]))
    assert searched == [[5, 9], [11]]
    assert first.shape == (2, 2, 10) and torch.equal(first[0, 1], again[0])
    assert index.searched_words == 3


def test_default_backend_and_env_override(monkeypatch):
    monkeypatch.delenv(knn.ENV_KNN, raising=False)
    expected_cpu = "torch"
    assert knn.default_backend("cpu") == expected_cpu
    assert saliency_fast.info()["knn_backend"] == knn.default_backend()
    monkeypatch.setenv(knn.ENV_KNN, "faiss-cpu")
    assert knn.default_backend("cpu") == "faiss-cpu"
    assert knn.NeighborIndex(torch.randn(10, 3), 2).backend == "faiss-cpu"
    monkeypatch.setenv(knn.ENV_KNN, "annoy")
    with pytest.raises(ValueError, match="SALIENCY_FAST_KNN must be one of"):
        knn.default_backend()


@pytest.mark.skipif(knn.faiss_gpu_available(), reason="FAISS GPU is present here")
def test_unavailable_backend_is_refused():
    with pytest.raises(RuntimeError, match="faiss-gpu.*not available"):
        knn.NeighborIndex(torch.randn(10, 3), 2, "faiss-gpu")


def test_process_cache_reuses_an_index_until_the_matrix_changes(vocab):
    knn.clear_cache()
    first = knn.neighbor_index(vocab, 8, "torch")
    assert knn.neighbor_index(vocab, 8, "torch") is first
    assert knn.neighbor_index(vocab.detach(), 8, "torch") is first  # a detached view shares memory and version
    assert knn.neighbor_index(vocab, 9, "torch") is not first
    first.neighbors(torch.tensor([0]))
    with torch.no_grad():
        vocab[0] += 1.0
    fresh = knn.neighbor_index(vocab, 8, "torch")
    assert fresh is not first
    assert torch.equal(fresh.neighbors(torch.tensor([0])), exact(vocab, [0], 8))
    knn.clear_cache()


def test_precomputed_graph_is_cached_as_safetensors(tmp_path):
    vocab = torch.randn(300, 8)
    built = knn.NeighborIndex(vocab, 6, "torch").precompute(tmp_path, chunk_size=128, progress=False)
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".safetensors"]  # written atomically: no temp file left
    assert files[0].name == f"knn-{knn.embedding_digest(vocab)}-k6.safetensors"
    loaded = knn.NeighborIndex(vocab, 6, "torch")
    loaded._search_words = None  # loading must not search
    loaded.precompute(tmp_path, progress=False)
    assert torch.equal(loaded.neighbors(torch.arange(300)), built.neighbors(torch.arange(300)))
    assert torch.equal(built.neighbors(torch.arange(300)), exact(vocab, range(300), 6))


def test_cached_graph_of_another_shape_is_refused(tmp_path):
    from safetensors.torch import save_file

    vocab = torch.randn(50, 4)
    save_file({"neighbors": torch.zeros(50, 3, dtype=torch.long)},
              str(tmp_path / f"knn-{knn.embedding_digest(vocab)}-k5.safetensors"))
    with pytest.raises(ValueError, match="cached neighbour graph"):
        knn.NeighborIndex(vocab, 5, "torch").precompute(tmp_path, progress=False)


def test_digest_depends_on_values_and_dtype():
    vocab = torch.randn(10, 4)
    other = vocab.clone()
    other[3, 1] += 1e-6
    assert knn.embedding_digest(vocab) == knn.embedding_digest(vocab.clone())
    assert knn.embedding_digest(vocab) != knn.embedding_digest(other)
    assert knn.embedding_digest(vocab) != knn.embedding_digest(vocab.double())


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: knn.NeighborIndex([[0.0, 1.0]], 1), TypeError, "embedding_matrix must be a torch.Tensor"),
        (lambda: knn.NeighborIndex(torch.randn(5), 1), ValueError, "vocab_size >= 2"),
        (lambda: knn.NeighborIndex(torch.randint(0, 3, (5, 2)), 1), TypeError, "floating dtype"),
        (lambda: knn.NeighborIndex(torch.randn(5, 2), 0), ValueError, "n_neighbors must be >= 1"),
        (lambda: knn.NeighborIndex(torch.randn(5, 2), 2.0), TypeError, "n_neighbors must be an int"),
        (lambda: knn.NeighborIndex(torch.tensor([[0.0], [float("nan")]]), 1), ValueError, "NaN or infinite"),
        (lambda: knn.NeighborIndex(torch.randn(5, 2), 1, "annoy"), ValueError, "backend must be one of"),
        (lambda: knn.NeighborIndex(torch.randn(5, 2), 1).neighbors(torch.tensor([5])), ValueError, r"\[0, 5\)"),
    ],
)
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()
