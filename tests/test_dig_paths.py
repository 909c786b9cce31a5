"""DIG paths: the batched builder equals the plain per-token reference token for token (random
embeddings and the real all-MiniLM-L6-v2 vocabulary), every path is monotonic with exact ends."""

from __future__ import annotations

import functools

import pytest
import torch

from saliency_fast import dig_paths, knn, reference
from tests.tiny_models import bert_tokenizer, minilm_word_embeddings

STRATEGIES = ["greedy", "maxcount"]


def both_builders(ids, base, embedding, k, n_anchors, steps, strategy, factor=0, constant=None):
    kwargs = dict(n_anchors=n_anchors, monotonize_steps=steps, strategy=strategy, factor=factor, constant=constant)
    index = knn.NeighborIndex(embedding, k, "torch")
    batched = dig_paths.build_paths(ids, base, embedding, index, **kwargs)
    exact = embedding.double()
    neighbors = functools.lru_cache(maxsize=None)(lambda w: reference.dig_exact_neighbors(exact, w, k))
    plain = dig_paths.build_paths_reference(ids, base, embedding, neighbors, **kwargs)
    return batched, plain


def assert_path_properties(paths, ids, base, embedding, constant=None):
    assert torch.equal(paths[-1], embedding[ids])  # ends exactly at the input
    start = embedding[base] if constant is None else torch.where(constant.unsqueeze(-1), embedding[ids], embedding[base])
    assert torch.equal(paths[0], start)  # starts exactly at the baseline
    assert bool(dig_paths.monotonic_steps(paths).all())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("factor", [0, 1])
def test_batched_equals_reference_on_random_embeddings(strategy, factor):
    embedding = torch.randn(400, 16)
    ids = torch.randint(3, 400, (2, 5))
    ids[1, 4] = 0  # a token equal to the baseline word
    base = torch.zeros_like(ids)
    base[0] = 1  # two different baseline words
    constant = torch.zeros_like(ids, dtype=torch.bool)
    constant[0, 0] = True  # a special token
    batched, plain = both_builders(ids, base, embedding, 20, 12, 12, strategy, factor, constant)
    assert batched.shape == (reference.dig_path_length(12, factor), 2, 5, 16)
    assert torch.equal(batched, plain)
    assert_path_properties(batched, ids, base, embedding, constant)
    assert bool((batched[:, 0, 0] == embedding[ids[0, 0]]).all())  # special: constant
    assert bool((batched[:, 1, 4] == embedding[0]).all())  # already the baseline: constant


@pytest.mark.parametrize("strategy, baseline_token", [("greedy", "[PAD]"), ("maxcount", "[MASK]")])
def test_batched_equals_reference_on_the_minilm_vocabulary(strategy, baseline_token):
    tok = bert_tokenizer()
    embedding = minilm_word_embeddings()
    ids = torch.tensor([tok.convert_tokens_to_ids(["movie", "terrible", "##ness", "paris"])])
    base = torch.full_like(ids, tok.convert_tokens_to_ids(baseline_token))
    batched, plain = both_builders(ids, base, embedding, 30, 6, 6, strategy)
    assert torch.equal(batched, plain)
    assert_path_properties(batched, ids, base, embedding)
    assert not torch.equal(batched[1], batched[-1])  # the path really moves through anchors


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_minilm_sentence_paths_are_monotonic_with_exact_ends(strategy):
    tok = bert_tokenizer()
    embedding = minilm_word_embeddings()
    enc = tok(["the acting was wooden and the plot made no sense", "a warm, funny and moving film"],
              return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    base = torch.full_like(ids, tok.pad_token_id)
    constant = torch.isin(ids, torch.tensor(tok.all_special_ids))
    index = knn.NeighborIndex(embedding, 100, "torch")
    paths = dig_paths.build_paths(ids, base, embedding, index, n_anchors=30, monotonize_steps=30,
                                  strategy=strategy, factor=1, constant=constant)
    assert paths.shape == (63, *ids.shape, 384)
    assert_path_properties(paths, ids, base, embedding, constant)
    assert bool((paths[:, constant] == embedding[ids[constant]]).all())


def test_upscale_inserts_midpoints():
    points = torch.tensor([[0.0, 2.0], [1.0, 4.0], [3.0, 4.0]])
    up = reference.dig_upscale(points)
    assert up.tolist() == [[0.0, 2.0], [0.5, 3.0], [1.0, 4.0], [2.0, 4.0], [3.0, 4.0]]
    assert reference.dig_path_length(30, 0) == 32 and reference.dig_path_length(30, 2) == 125


def test_step_plan_conventions():
    assert dig_paths.step_plan(30) == (30, 30)
    assert dig_paths.step_plan(30, "inseq") == (28, 30)
    with pytest.raises(ValueError, match="n_steps must be >= 2 with convention='inseq'"):
        dig_paths.step_plan(1, "inseq")
    with pytest.raises(ValueError, match="convention must be one of"):
        dig_paths.step_plan(5, "captum")
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        dig_paths.step_plan(0)


def test_monotonic_steps_detects_a_backward_step():
    paths = torch.tensor([[[0.0]], [[0.5]], [[0.4]], [[1.0]]])
    assert dig_paths.monotonic_steps(paths).tolist() == [False]
    assert dig_paths.monotonic_steps(paths.sort(0).values).tolist() == [True]


def bad_builds():
    embedding = torch.randn(30, 4)
    ids = torch.randint(0, 30, (2, 3))
    ok = dict(n_anchors=3, monotonize_steps=3)
    return [
        ((ids.float(), ids, embedding), ok, TypeError, "input_ids must hold integer token ids"),
        ((ids + 30, ids, embedding), ok, ValueError, r"input_ids must lie in \[0, 30\)"),
        ((ids, ids[:1], embedding), ok, ValueError, "baseline_ids has shape"),
        ((ids, ids, embedding[0]), ok, ValueError, "embedding_matrix must have shape"),
        ((ids, ids, embedding), dict(ok, n_anchors=-1), ValueError, "n_anchors must be an int >= 0"),
        ((ids, ids, embedding), dict(ok, monotonize_steps=0), ValueError, "monotonize_steps must be >= 1"),
        ((ids, ids, embedding), dict(ok, strategy="random"), ValueError, "strategy must be one of"),
        ((ids, ids, embedding), dict(ok, factor=9), ValueError, r"factor must be an int in \[0, 8\]"),
        ((ids, ids, embedding), dict(ok, constant=ids), TypeError, "constant must be a bool mask"),
    ]


@pytest.mark.parametrize("case", range(len(bad_builds())))
def test_bad_input(case):
    args, kwargs, error, match = bad_builds()[case]
    index = knn.NeighborIndex(torch.randn(30, 4), 5, "torch")
    with pytest.raises(error, match=match):
        dig_paths.build_paths(*args, index, **kwargs)
    with pytest.raises(error, match=match):
        dig_paths.build_paths_reference(*args, lambda w: [], **kwargs)


def test_index_of_another_matrix_is_refused():
    ids = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="index must be a NeighborIndex of embedding_matrix"):
        dig_paths.build_paths(ids, ids, torch.randn(30, 4), knn.NeighborIndex(torch.randn(31, 4), 5),
                              n_anchors=2, monotonize_steps=2)
