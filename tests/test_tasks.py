"""Building blocks of the Explainer: target functions, word ids, batching, and each task's model
call and score (checked against the model called the ordinary way, on input ids)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from saliency_fast.hf import batching, tasks, words
from saliency_fast.hf.explainer import Explainer
from saliency_fast.hf.targets import TARGET_CHOICES, check_target_fn, resolve_class, score_from_logits, score_from_parts
from tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

# ------------------------------------------------------------------------------ target functions


@pytest.mark.parametrize("kind", TARGET_CHOICES)
def test_score_from_logits_matches_its_definition(kind):
    logits = torch.randn(4, 7, dtype=torch.float64)
    index = torch.tensor([0, 3, 6, 2])
    expected = {
        "logit": logits[torch.arange(4), index],
        "prob": logits.softmax(-1)[torch.arange(4), index],
        "logprob": logits.log_softmax(-1)[torch.arange(4), index],
        "loss": F.cross_entropy(logits, index, reduction="none"),
    }[kind]
    got = score_from_logits(logits, index, kind)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-7)
    parts = score_from_parts(logits[torch.arange(4), index], torch.logsumexp(logits, -1), kind)
    torch.testing.assert_close(parts, got)


def test_target_function_errors():
    with pytest.raises(ValueError, match="target must be one of"):
        check_target_fn("probability")
    with pytest.raises(ValueError, match="log_normalizer"):
        score_from_parts(torch.zeros(2), None, "prob")


def test_resolve_class():
    labels = ["negative", "Positive"]
    assert resolve_class(None, labels) is None
    assert resolve_class(1, labels) == 1
    assert resolve_class(torch.tensor(0), labels) == 0
    assert resolve_class("Positive", labels) == 1
    assert resolve_class("positive", labels) == 1  # unique case-insensitive match
    with pytest.raises(ValueError, match=r"target=2 is out of range: expected a class index in 0..1"):
        resolve_class(2, labels)
    with pytest.raises(ValueError, match=r"target=-1 is out of range"):
        resolve_class(-1, labels)
    with pytest.raises(ValueError, match=r"target='neutral' is not a known class; expected one of"):
        resolve_class("neutral", labels)
    with pytest.raises(TypeError, match="target must be a class index"):
        resolve_class(True, labels)
    with pytest.raises(TypeError, match="target must be a class index"):
        resolve_class(1.0, labels)


# ------------------------------------------------------------------------------------ word ids


def test_word_ids_from_a_fast_tokenizer_merge_subwords_and_skip_specials():
    tok = bert_tokenizer()
    enc = tok("unbelievable tokenization")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    special = [t in ("[CLS]", "[SEP]") for t in tokens]
    ids = words.word_ids(enc, 0, tokens, special)
    assert ids[0] is None and ids[-1] is None
    assert len(set(ids[1:-1])) == 2 and len(tokens) > 4  # several subwords, two words
    assert ids[1:-1] == sorted(ids[1:-1])


def test_word_ids_of_a_pair_stay_distinct_across_the_two_texts():
    tok = bert_tokenizer()
    enc = tok("a cat", "a dog")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    special = [t in ("[CLS]", "[SEP]") for t in tokens]
    assert words.word_ids(enc, 0, tokens, special) == [None, 0, 1, None, 2, 3, None]


def test_word_ids_guessed_from_subword_markers():
    assert words.word_ids_from_tokens(["[CLS]", "un", "##believ", "##able", "film", "[SEP]"],
                                      [True, False, False, False, False, True]) == [None, 0, 0, 0, 1, None]
    assert words.word_ids_from_tokens(["The", "Ġcat", "s", "Ġsat"], [False] * 4) == [0, 1, 1, 2]
    assert words.word_ids_from_tokens(["the", "cat"], [False, False]) == [0, 1]


# ------------------------------------------------------------------------------------ batching


def test_length_buckets_group_similar_lengths_and_cover_every_index():
    buckets = batching.length_buckets([3, 9, 4, 8, 1], batch_size=2)
    assert buckets == [[1, 3], [2, 0], [4]]


@pytest.mark.parametrize("left", [False, True])
def test_pad_place_and_crop_round_trip(left):
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    batch = batching.pad(seqs, [torch.tensor([0, 0, 1]), torch.tensor([1])], pad_token_id=0, left=left)
    assert batch.input_ids.shape == (2, 3)
    assert batch.attention_mask.tolist() == ([[1, 1, 1], [0, 0, 1]] if left else [[1, 1, 1], [1, 0, 0]])
    assert torch.equal(batch.crop(batch.input_ids, 1), torch.tensor([8]))
    assert torch.equal(batch.crop(batch.token_type_ids, 0), torch.tensor([0, 0, 1]))
    if left:
        assert batch.position_ids[1, -1] == 0 and batch.position_ids[0].tolist() == [0, 1, 2]
    else:
        assert batch.position_ids is None
    placed = batch.place([torch.ones(3), torch.full((1,), 2.0)], torch.zeros(2, 3))
    assert torch.equal(batch.crop(placed, 1), torch.tensor([2.0])) and float(placed.sum()) == 5.0


def test_decoder_only_detection():
    assert batching.is_decoder_only(tiny_gpt2()[0])
    assert not batching.is_decoder_only(tiny_bert())


# --------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize(
    ("model", "labels", "task"),
    [
        (lambda: tiny_bert("classification"), None, "classify"),
        (lambda: tiny_bert("tagging"), None, "tagging"),
        (lambda: tiny_bert("multiple_choice"), None, "multiple_choice"),
        (lambda: tiny_bert("base"), None, "similarity"),
        (lambda: tiny_bert("base"), ["a", "b"], "zero-shot"),
        (lambda: tiny_gpt2()[0], None, "generate"),
    ],
)
def test_auto_task_from_the_model_class(model, labels, task):
    assert tasks.infer_task(model(), labels) == task


def test_auto_task_unknown_model_class_is_an_error():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_bert("base")

    with pytest.raises(ValueError, match="task='auto' cannot tell the task of a Custom"):
        tasks.infer_task(Custom(), None)


def _predict(explainer, texts, **task_kwargs):
    task = explainer._make_task(**{"choices": None, "reference": None, "labels": None, **task_kwargs})
    units = task.encode(texts)
    return task, units, explainer.predict(task, units)


def test_classify_outputs_over_embeddings_equal_the_model_on_ids():
    tok = bert_tokenizer()
    model = tiny_bert("classification")
    texts = ["a short one", "a rather longer text with several more words", "mid length text"]
    _, _, outputs = _predict(Explainer(model, tok, batch_size=2), texts)
    for text, out in zip(texts, outputs):
        torch.testing.assert_close(out, model(**tok(text, return_tensors="pt")).logits[0], rtol=1e-5, atol=1e-6)


def test_decoder_classification_is_left_padded_and_reads_the_last_real_token():
    model_lm, tok = tiny_gpt2()
    config = transformers.GPT2Config(**{**model_lm.config.to_dict(), "num_labels": 2})
    model = transformers.GPT2ForSequenceClassification(config).eval()
    texts = ["the movie was good", "bad", "a very very terrible movie and it was not good"]
    _, _, outputs = _predict(Explainer(model, tok, batch_size=3), texts)
    for text, out in zip(texts, outputs):
        torch.testing.assert_close(out, model(**tok(text, return_tensors="pt")).logits[0], rtol=1e-5, atol=1e-6)


def test_tagging_outputs_are_cropped_per_text():
    tok = bert_tokenizer()
    model = tiny_bert("tagging")
    texts = ["one two three four five", "six"]
    _, units, outputs = _predict(Explainer(model, tok), texts)
    for text, unit, out in zip(texts, units, outputs):
        assert out.shape == (len(unit.tokens), 3)
        torch.testing.assert_close(out, model(**tok(text, return_tensors="pt")).logits[0], rtol=1e-5, atol=1e-6)


def test_multiple_choice_units_score_like_the_joint_model_call():
    tok = bert_tokenizer()
    model = tiny_bert("multiple_choice")
    prompt, choices = "where is the cat?", ["on the mat", "in the big old house", "away"]
    _, units, outputs = _predict(Explainer(model, tok), [prompt], choices=choices)
    assert [u.name for u in units] == choices
    enc = tok([prompt] * 3, choices, padding=True, return_tensors="pt")
    joint = model(**{k: v.unsqueeze(0) for k, v in enc.items()}).logits[0]
    torch.testing.assert_close(torch.stack(outputs), joint, rtol=1e-5, atol=1e-6)


def test_pooled_embedding_is_the_masked_mean_and_zero_shot_margin():
    tok = bert_tokenizer()
    model = tiny_bert("base")
    explainer = Explainer(model, tok, labels=["good", "bad", "dull"])
    task, _, outputs = _predict(explainer, ["a fine film", "a longer and much worse film"])
    enc = tok("a longer and much worse film", return_tensors="pt")
    manual = model(**enc).last_hidden_state[0].mean(0)
    torch.testing.assert_close(outputs[1], manual, rtol=1e-5, atol=1e-6)
    labels = torch.stack([model(**tok(f"This text is {w}.", return_tensors="pt")).last_hidden_state[0].mean(0)
                          for w in ["good", "bad", "dull"]])
    cos = F.cosine_similarity(manual[None], labels)
    index = torch.tensor([1])
    margin = task.score(outputs[1][None], index, None, None, "margin")
    torch.testing.assert_close(margin, cos[1:2] - (cos[0] + cos[2]) / 2, rtol=1e-5, atol=1e-6)
    cosine = task.score(outputs[1][None], index, None, None, "cosine")
    torch.testing.assert_close(cosine, cos[1:2], rtol=1e-5, atol=1e-6)


def test_from_pretrained_loads_the_head_and_the_sentence_pooling(tmp_path):
    model, tok = tiny_bert("tagging"), bert_tokenizer()
    model.save_pretrained(tmp_path / "tagger")
    tok.save_pretrained(tmp_path / "tagger")
    explainer = Explainer.from_pretrained(tmp_path / "tagger")
    assert explainer.task == "tagging" and isinstance(explainer.model, transformers.BertForTokenClassification)
    encoder = tiny_bert("base")
    encoder.save_pretrained(tmp_path / "encoder")
    tok.save_pretrained(tmp_path / "encoder")
    (tmp_path / "encoder" / "1_Pooling").mkdir()
    (tmp_path / "encoder" / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    explainer = Explainer.from_pretrained(tmp_path / "encoder", labels=["x", "y"])
    assert explainer.task == "zero-shot" and explainer.pooling == "cls"
    with pytest.raises(ValueError, match="path .* is not a loadable model"):
        Explainer.from_pretrained(tmp_path / "missing")
