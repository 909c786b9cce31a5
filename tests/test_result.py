"""AttributionResult: validation, files (save/load, to_json), normalize, aggregate_words, top_k."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch

import saliency_fast
from saliency_fast.result import AttributionResult, load
from tests.tiny_models import bert_tokenizer, tiny_bert

NAN = float("nan")


def assert_same(a: torch.Tensor | None, b: torch.Tensor | None) -> None:
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def classification(**overrides) -> AttributionResult:
    kwargs = dict(
        tokens=["[CLS]", "in", "##cred", "##ible", "film", "[SEP]"],
        scores=torch.tensor([[NAN, 0.5, -2.0, 1.0, 3.0, NAN], [NAN, -1.0, 0.25, 0.0, -0.5, NAN]]),
        targets=["positive", "negative"],
        mask=torch.tensor([[False, True, True, True, True, False]] * 2),
        metadata={"task": "classify", "method": "saliency", "model": "tiny"},
        token_ids=[101, 1999, 16748, 7028, 2143, 102],
        word_ids=[None, 0, 0, 0, 1, None],
        target_ids=[0, 1],
    )
    kwargs.update(overrides)
    return AttributionResult(**kwargs)


def generation() -> AttributionResult:
    """Prompt "Ġthe Ġmov ie" + generated "Ġwas Ġgood": row i targets token 3 + i."""
    tokens = ["Ġthe", "Ġmov", "ie", "Ġwas", "Ġgood"]
    scores = torch.tensor([[0.1, -0.2, 0.3, NAN, NAN], [0.4, 0.5, -0.6, 0.7, NAN]])
    mask = ~torch.isnan(scores)
    layers = torch.stack([scores, 2 * scores], dim=1)
    return AttributionResult(
        tokens=tokens, scores=scores, targets=["Ġwas", "Ġgood"], mask=mask,
        metadata={"task": "generate", "n_prompt_tokens": 3, "generated_text": "the movie was good",
                  "completeness_error": [NAN, 1e-7], "method": "saliency"},
        token_ids=[1, 2, 3, 4, 5], word_ids=[0, 1, 1, 2, 3], target_ids=[4, 5],
        layer_scores=layers, layer_names=["layer 0", "layer 1"],
    )


# ----------------------------------------------------------------------------- construction


def test_public_names():
    assert saliency_fast.AttributionResult is AttributionResult
    assert saliency_fast.load is load


def test_scores_become_float32_cpu_detached():
    scores = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    result = AttributionResult(tokens=["a", "b", "c"], scores=scores, targets=["t"])
    assert result.scores.dtype == torch.float32 and not result.scores.requires_grad
    torch.testing.assert_close(result.scores, scores.detach().float())


@pytest.mark.parametrize(
    "overrides, error, field",
    [
        (dict(scores=torch.zeros(2, 5)), ValueError, "scores"),
        (dict(scores=torch.zeros(3, 6)), ValueError, "scores"),
        (dict(scores=torch.zeros(2, 6, 2, 2)), ValueError, "scores"),
        (dict(scores=torch.zeros(2, 6, dtype=torch.int64)), TypeError, "scores"),
        (dict(scores=[[0.0] * 6] * 2), TypeError, "scores"),
        (dict(tokens=["a"] * 5 + [3]), TypeError, "tokens"),
        (dict(tokens="abcdef"), TypeError, "tokens"),
        (dict(targets=[]), ValueError, "targets"),
        (dict(mask=torch.ones(2, 6)), TypeError, "mask"),
        (dict(mask=torch.ones(2, 5, dtype=torch.bool)), ValueError, "mask"),
        (dict(metadata=[]), TypeError, "metadata"),
        (dict(token_ids=[1, 2, 3]), ValueError, "token_ids"),
        (dict(token_ids=[1.0] * 6), TypeError, "token_ids"),
        (dict(word_ids=[0] * 5), ValueError, "word_ids"),
        (dict(target_ids=[0, 1, 2]), ValueError, "target_ids"),
        (dict(layer_scores=torch.zeros(2, 3, 5)), ValueError, "layer_scores"),
        (dict(layer_names=["a"]), ValueError, "layer_names"),
        (dict(metadata={"n_prompt_tokens": 7}), ValueError, "n_prompt_tokens"),
    ],
)
def test_constructor_rejects_inconsistent_fields(overrides, error, field):
    with pytest.raises(error, match=field):
        classification(**overrides)


def test_token_scores_and_meaningful():
    result = classification()
    assert result.token_scores() is result.scores
    assert result.meaningful().tolist() == [[False, True, True, True, True, False]] * 2
    deep = classification(scores=torch.arange(24.0).view(2, 6, 2))
    torch.testing.assert_close(deep.token_scores(), torch.arange(24.0).view(2, 6, 2).sum(-1))


def test_repr_names_task_and_shape():
    text = repr(classification())
    assert "task='classify'" in text and "scores=(2, 6)" in text and "'positive'" in text
    result = classification()
    assert result == result and result != classification()  # identity, never a tensor truth-value error


# ----------------------------------------------------------------------------- top_k


def test_top_k_orders_by_magnitude_and_skips_masked():
    result = classification()
    assert result.top_k(2) == [[("film", 3.0), ("##cred", -2.0)], [("in", -1.0), ("film", -0.5)]]
    # more than the meaningful tokens: only those (4 of 6)
    assert [len(row) for row in result.top_k(10)] == [4, 4]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must"):
            result.top_k(bad)


# ----------------------------------------------------------------------------- files


def test_to_dict_is_strict_json_with_nan_as_null():
    result = generation()
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["scores"][0] == [pytest.approx(0.1), pytest.approx(-0.2), pytest.approx(0.3), None, None]
    assert data["mask"][0] == [True, True, True, False, False]
    assert data["metadata"]["completeness_error"] == [None, 1e-7]
    assert data["layer_scores"][1][1][1] == pytest.approx(1.0)
    assert data["tokens"] == result.tokens and data["word_ids"] == result.word_ids


def test_to_dict_makes_metadata_json_safe():
    result = classification(metadata={"t": torch.tensor([1.0, NAN]), 3: math.inf, "nested": {"x": (1, 2)}})
    meta = result.to_dict()["metadata"]
    assert meta == {"t": [1.0, None], "3": None, "nested": {"x": [1, 2]}}


@pytest.mark.parametrize("make", [classification, generation])
def test_save_load_round_trip_is_exact(tmp_path, make):
    result = make()
    path = result.save(tmp_path / "res.json")
    assert path.exists() and (tmp_path / "res.safetensors").exists()
    back = load(path)
    for field in ("tokens", "targets", "token_ids", "word_ids", "target_ids", "layer_names"):
        assert getattr(back, field) == getattr(result, field), field
    for field in ("scores", "mask", "layer_scores"):
        assert_same(getattr(back, field), getattr(result, field))
    # metadata exactly, NaN included
    assert json.dumps(back.metadata, sort_keys=True) == json.dumps(result.metadata, sort_keys=True)


def test_save_load_three_dim_scores_and_random_values(tmp_path):
    scores = torch.randn(3, 4, 5)
    scores[1, 2, 3] = NAN
    result = AttributionResult(tokens=list("abcd"), scores=scores, targets=["x", "y", "z"],
                               metadata={"aggregate": "none", "big": 2.0**60, "tiny": 1e-300, "neg_inf": -math.inf})
    back = load(result.save(tmp_path / "deep.json"))
    assert_same(back.scores, result.scores)
    assert back.metadata["big"] == 2.0**60 and back.metadata["tiny"] == 1e-300 and back.metadata["neg_inf"] == -math.inf


def test_save_rejects_what_cannot_round_trip(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\['obj'\]"):
        classification(metadata={"obj": object()}).save(tmp_path / "x.json")
    with pytest.raises(TypeError, match="str keys"):
        classification(metadata={1: "a"}).save(tmp_path / "x.json")
    with pytest.raises(ValueError, match="safetensors"):
        classification().save(tmp_path / "x.safetensors")


def test_to_json_writes_a_file_that_load_reads(tmp_path):
    result = generation()
    text = result.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == text
    back = load(tmp_path / "r.json")
    assert_same(back.scores, result.scores)  # float32 -> JSON -> float32 is exact; NaN via null
    assert_same(back.mask, result.mask)
    assert_same(back.layer_scores, result.layer_scores)
    assert back.metadata["completeness_error"] == [None, 1e-7]


def test_load_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ValueError, match="not a saliency_fast result"):
        load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="format"):
        load(tmp_path / "other.json")
    path = classification().save(tmp_path / "ok.json")
    data = json.loads(path.read_text())
    data["tensors"] = "../elsewhere.safetensors"
    (tmp_path / "evil.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="invalid tensors file"):
        load(tmp_path / "evil.json")
    data["tensors"] = "gone.safetensors"
    (tmp_path / "gone.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load(tmp_path / "gone.json")


# ----------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    "how, denominators",
    [("max_abs", (3.0, 1.0)), ("l1", (6.5, 1.75)), ("l2", (math.sqrt(14.25), math.sqrt(1.3125))),
     ("sum_to_one", (2.5, -1.25))],
)
def test_normalize_uses_meaningful_entries_only(how, denominators):
    # a masked entry with a finite value must neither count nor change
    result = classification(scores=torch.tensor([[9.0, 0.5, -2.0, 1.0, 3.0, NAN], [9.0, -1.0, 0.25, 0.0, -0.5, NAN]]))
    out = result.normalize(how)
    for row, denominator in enumerate(denominators):
        expected = result.scores[row].clone()
        expected[1:5] /= denominator
        assert_same(out.scores[row], expected)
    assert out.metadata["normalization"] == how and result.metadata.get("normalization") is None
    assert_same(out.mask, result.mask)


def test_normalize_zero_row_stays_zero_and_three_dims_flatten():
    zero = classification(scores=torch.zeros(2, 6)).normalize("l1")
    assert_same(zero.scores, torch.zeros(2, 6))
    deep = AttributionResult(tokens=["a", "b"], scores=torch.tensor([[[1.0, -3.0], [2.0, 0.0]]]), targets=["t"])
    torch.testing.assert_close(deep.normalize("max_abs").scores, torch.tensor([[[1 / 3, -1.0], [2 / 3, 0.0]]]))
    with pytest.raises(ValueError, match="how must be one of"):
        deep.normalize("softmax")


def test_normalize_layer_scores_per_row_and_layer():
    result = generation().normalize("max_abs")
    # row 1, layer 1 is 2 * [0.4, 0.5, -0.6, 0.7] -> divided by 1.4
    torch.testing.assert_close(result.layer_scores[1, 1, :4], torch.tensor([0.4, 0.5, -0.6, 0.7]) / 0.7)
    torch.testing.assert_close(result.scores[0, :3], torch.tensor([1 / 3, -2 / 3, 1.0]))
    assert torch.isnan(result.scores[0, 3:]).all()


# ----------------------------------------------------------------------------- aggregate_words


@pytest.mark.parametrize(
    "how, first_row",
    [("sum", [NAN, -0.5, 3.0, NAN]), ("mean", [NAN, -0.5 / 3, 3.0, NAN]), ("max_abs", [NAN, -2.0, 3.0, NAN])],
)
def test_aggregate_words_merges_word_pieces(how, first_row):
    words = classification().aggregate_words(how)
    assert words.tokens == ["[CLS]", "incredible", "film", "[SEP]"]
    assert_same(words.scores[0], torch.tensor(first_row))
    assert words.mask.tolist() == [[False, True, True, False]] * 2
    assert words.word_ids == [None, 0, 1, None] and words.token_ids is None
    assert words.metadata["word_aggregation"] == how
    # merging again changes nothing
    assert_same(words.aggregate_words(how).scores, words.scores)


def test_aggregate_words_ignores_masked_pieces_and_updates_prompt_length():
    result = generation()
    words = result.aggregate_words("sum")
    assert words.tokens == ["Ġthe", "movie", "Ġwas", "Ġgood"]
    assert words.metadata["n_prompt_tokens"] == 2
    expected = torch.tensor([[0.1, 0.1, NAN, NAN], [0.4, -0.1, 0.7, NAN]])
    torch.testing.assert_close(words.scores, expected, equal_nan=True)
    assert words.mask.tolist() == [[True, True, False, False], [True, True, True, False]]
    torch.testing.assert_close(words.layer_scores[:, 1], 2 * expected, equal_nan=True)
    # a word whose pieces are all masked has no score
    masked = classification(mask=torch.tensor([[False, False, False, False, True, False]] * 2)).aggregate_words()
    assert torch.isnan(masked.scores[:, 1]).all() and masked.mask[:, 1].tolist() == [False, False]


def test_aggregate_words_with_real_tokenizer_pairs():
    """Word ids restart in the second sequence of a pair: runs, not ids, make the words."""
    encoding = bert_tokenizer()("unbelievably good", "unbelievably bad")
    tokens = encoding.tokens()
    word_ids = encoding.word_ids()
    result = AttributionResult(tokens=tokens, scores=torch.ones(1, len(tokens)), targets=["t"], word_ids=word_ids)
    words = result.aggregate_words("sum")
    assert words.tokens == ["[CLS]", "unbelievably", "good", "[SEP]", "unbelievably", "bad", "[SEP]"]
    n_pieces = tokens.index("good") - 1
    assert words.scores[0, 1] == n_pieces > 1


def test_aggregate_words_bad_input():
    with pytest.raises(ValueError, match="word_ids"):
        classification(word_ids=None).aggregate_words()
    with pytest.raises(ValueError, match="how must be one of"):
        classification().aggregate_words("median")


# ----------------------------------------------------------------------------- with the Explainer


def test_explainer_result_round_trips_and_merges_words(tmp_path):
    explainer = saliency_fast.Explainer(tiny_bert("classification"), bert_tokenizer())
    result = explainer.attribute("an unbelievably good film", method="input_x_gradient")
    back = load(result.save(tmp_path / "r.json"))
    assert_same(back.scores, result.scores)
    assert back.metadata == result.metadata
    words = result.aggregate_words("sum")
    assert "unbelievably" in words.tokens and len(words.tokens) < len(result.tokens)
    torch.testing.assert_close(words.scores.nansum(), result.scores[result.meaningful()].sum())


# ----------------------------------------------------------------------------- encoder-decoder source side


def seq2seq() -> AttributionResult:
    """Source "▁le ▁fil m </s>", target prefix "<pad> ▁the ▁film": row i targets target token i + 1."""
    source_scores = torch.tensor([[1.0, -2.0, 1.0, NAN], [0.5, 0.5, 1.0, NAN]])
    scores = torch.tensor([[NAN, NAN, NAN], [3.0, NAN, NAN]])
    return AttributionResult(
        tokens=["<pad>", "▁the", "▁film"], scores=scores, targets=["▁the", "▁film"], mask=~torch.isnan(scores),
        metadata={"task": "generate", "method": "saliency"}, word_ids=[None, 0, 1],
        source_tokens=["▁le", "▁fil", "m", "</s>"], source_scores=source_scores,
        source_mask=torch.tensor([[True, True, True, False]] * 2), source_token_ids=[3, 4, 5, 1],
        source_word_ids=[0, 1, 1, None],
    )


def test_source_side_is_checked_and_round_trips(tmp_path):
    result = seq2seq()
    assert result.has_source and not classification().has_source
    loaded = load(result.save(tmp_path / "r.json"))
    for name in ("scores", "mask", "source_scores", "source_mask"):
        assert_same(getattr(loaded, name), getattr(result, name))
    assert loaded.source_tokens == result.source_tokens and loaded.source_word_ids == result.source_word_ids
    via_json = load(pathlib.Path(result.to_json(tmp_path / "r2.json") and tmp_path / "r2.json"))
    assert_same(via_json.source_scores, result.source_scores) and via_json.source_token_ids == [3, 4, 5, 1]
    assert result.to_dict()["source_scores"][0] == [1.0, -2.0, 1.0, None]

    with pytest.raises(ValueError, match="source_tokens and source_scores go together"):
        classification(source_tokens=["a"])
    with pytest.raises(ValueError, match=r"source_scores must have shape \[2, 2\]"):
        classification(source_tokens=["a", "b"], source_scores=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="source_mask needs source_tokens"):
        classification(source_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="source_word_ids must have one entry per source"):
        classification(source_tokens=["a", "b"], source_scores=torch.zeros(2, 2), source_word_ids=[0])


def test_source_side_normalizes_with_the_target_side_and_merges_its_words():
    result = seq2seq()
    normalized = result.normalize("l1")  # one denominator per row across both sides, as inseq
    torch.testing.assert_close(normalized.source_scores[1, :3], torch.tensor([0.1, 0.1, 0.2]))
    torch.testing.assert_close(normalized.scores[1, 0], torch.tensor(0.6))
    torch.testing.assert_close(normalized.source_scores[0, :3], torch.tensor([0.25, -0.5, 0.25]))
    assert math.isnan(normalized.source_scores[0, 3]) and math.isnan(normalized.scores[0, 0])

    words = result.aggregate_words("sum")
    assert words.source_tokens == ["▁le", "film", "</s>"] and words.tokens == ["<pad>", "▁the", "▁film"]
    torch.testing.assert_close(words.source_scores[0, :2], torch.tensor([1.0, -1.0]))
    assert words.source_mask.tolist() == [[True, True, False]] * 2 and words.source_token_ids is None
    assert result.top_k(1, side="source") == [[("▁fil", -2.0)], [("m", 1.0)]]
    assert result.top_k(1) == [[], [("<pad>", 3.0)]]
    with pytest.raises(ValueError, match="side='source' needs"):
        classification().top_k(side="source")
    with pytest.raises(ValueError, match="no source_word_ids"):
        AttributionResult(**{**vars(seq2seq()), "source_word_ids": None}).aggregate_words()
