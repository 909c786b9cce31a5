"""Defaults that work on published decoder checkpoints: tokenizers without pad (GPT-2: unk = eos)
or without pad and unk (Llama-3), and decoder classifiers whose ``config.pad_token_id`` is None,
on tiny GPT-2, Llama, Qwen2 and Mistral configs, for every Explainer method."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import saliency_fast
from saliency_fast.hf import baselines, batching, last_token, method_registry
from saliency_fast.hf.tasks import ClassifyTask
from tiny_models import DECODER_ARCHITECTURES, gpt2_like_tokenizer, llama3_like_tokenizer, tiny_decoder

pytestmark = pytest.mark.filterwarnings("ignore::saliency_fast.hf.baselines.BaselineFallbackWarning")

TEXTS = ["The capital of France is Paris.", "a dull film", "I loved every minute of it, the fox too."]
PROMPT = "The capital of France is"
FORCED = "The capital of France is Paris."
TOKENIZERS = {"gpt2-like": gpt2_like_tokenizer, "llama3-like": llama3_like_tokenizer}
# the default baseline 'pad' falls back to: GPT-2's unk (its eos), Llama-3's eos (inseq's choice on both)
FALLBACK = {"gpt2-like": "unk", "llama3-like": "eos"}
# n_steps only sets the cost: smaller than the defaults keeps the matrix fast; every option is a default
# in test_every_method_runs_with_its_defaults
FEW_STEPS = {"integrated_gradients": {"n_steps": 8}, "sequential_integrated_gradients": {"n_steps": 4},
             "discretized_integrated_gradients": {"n_steps": 8}, "smoothgrad": {"nt_samples": 2},
             "vargrad": {"nt_samples": 2}}


def _build(arch: str, head: str, tokenizer_name: str):
    """The tokenizer, a tiny model, a snapshot of both (see :func:`_assert_untouched`) and an Explainer."""
    tokenizer = TOKENIZERS[tokenizer_name]()
    model = tiny_decoder(arch, head, tokenizer)
    return tokenizer, model, _snapshot(model, tokenizer), saliency_fast.Explainer(model, tokenizer)


def _snapshot(model, tokenizer) -> tuple:
    return (model.config.to_json_string(), tokenizer.pad_token, tokenizer.unk_token, tokenizer.padding_side,
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_untouched(before, model, tokenizer) -> None:
    after = _snapshot(model, tokenizer)
    assert after[:4] == before[:4], "the user's config or tokenizer was changed"
    for name, value in before[4].items():
        assert torch.equal(value, after[4][name]), f"parameter {name} was changed"


def _check_baseline_metadata(result, spec, tokenizer_name, requested="pad"):
    if spec.uses_baseline:
        assert result.metadata["baseline"] == (FALLBACK[tokenizer_name] if requested == "pad" else requested)
    else:
        assert result.metadata["baseline"] is None


def test_the_tokenizers_are_built_like_the_published_ones():
    gpt2, llama3 = gpt2_like_tokenizer(), llama3_like_tokenizer()
    assert gpt2.pad_token_id is None and gpt2.unk_token_id == gpt2.eos_token_id == gpt2.bos_token_id
    assert llama3.pad_token_id is None and llama3.unk_token_id is None and llama3.mask_token_id is None
    assert llama3(PROMPT)["input_ids"][0] == llama3.bos_token_id  # Llama-3 prepends BOS
    for arch in DECODER_ARCHITECTURES:
        assert tiny_decoder(arch, "classification", gpt2).config.pad_token_id is None


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
@pytest.mark.parametrize("arch", DECODER_ARCHITECTURES)
def test_every_method_classifies_a_batch_without_pad(arch, tokenizer_name):
    tokenizer, model, before, explainer = _build(arch, "classification", tokenizer_name)
    for method in method_registry.method_names("classify"):
        spec = method_registry.resolve_method(method)
        results = explainer.attribute(TEXTS, method=method, progress=False, **FEW_STEPS.get(method, {}))
        for text, result in zip(TEXTS, results):
            assert result.scores.shape == (1, len(tokenizer(text)["input_ids"]))
            assert bool(torch.isfinite(result.scores[result.mask]).all()), (method, text)
            _check_baseline_metadata(result, spec, tokenizer_name)
    _assert_untouched(before, model, tokenizer)


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
@pytest.mark.parametrize("arch", DECODER_ARCHITECTURES)
def test_every_generation_method_runs_without_pad(arch, tokenizer_name):
    tokenizer, model, before, explainer = _build(arch, "causal_lm", tokenizer_name)
    n_tokens = len(tokenizer(FORCED)["input_ids"])
    for method in method_registry.method_names("generate"):
        spec = method_registry.resolve_method(method)
        result = explainer.attribute_generation(PROMPT, generated_text=FORCED, method=method, progress=False,
                                                **FEW_STEPS.get(method, {}))
        assert result.scores.shape == (n_tokens - len(tokenizer(PROMPT)["input_ids"]), n_tokens)
        assert bool(torch.isfinite(result.scores[result.mask]).all()), method
        _check_baseline_metadata(result, spec, tokenizer_name)
    greedy = explainer.attribute_generation(PROMPT, max_new_tokens=2, progress=False)
    assert greedy.scores.shape[0] == 2
    _assert_untouched(before, model, tokenizer)


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
def test_every_method_runs_with_its_defaults(tokenizer_name):
    """No option at all: the defaults of every method, classification and generation."""
    tokenizer = TOKENIZERS[tokenizer_name]()
    classifier = saliency_fast.Explainer(tiny_decoder("llama", "classification", tokenizer), tokenizer)
    lm = saliency_fast.Explainer(tiny_decoder("gpt2", "causal_lm", tokenizer), tokenizer)
    for method in method_registry.method_names("classify"):
        spec = method_registry.resolve_method(method)
        _check_baseline_metadata(classifier.attribute(TEXTS[1], method=method), spec, tokenizer_name)
        if method in method_registry.method_names("generate"):
            result = lm.attribute_generation(PROMPT, generated_text=FORCED, method=method, progress=False)
            _check_baseline_metadata(result, spec, tokenizer_name)


@pytest.mark.parametrize("arch", DECODER_ARCHITECTURES)
@pytest.mark.parametrize("method,kwargs", [("saliency", {}), ("integrated_gradients", {"n_steps": 6}),
                                           ("occlusion", {}), ("attention", {})])
def test_a_batch_equals_each_text_alone(arch, method, kwargs):
    tokenizer = llama3_like_tokenizer()
    explainer = saliency_fast.Explainer(tiny_decoder(arch, "classification", tokenizer), tokenizer, batch_size=3)
    batched = explainer.attribute(TEXTS, method=method, progress=False, **kwargs)
    for text, together in zip(TEXTS, batched):
        alone = explainer.attribute(text, method=method, progress=False, **kwargs)
        torch.testing.assert_close(together.scores, alone.scores, rtol=1e-4, atol=1e-6, equal_nan=True)
        assert together.metadata["prediction"] == alone.metadata["prediction"]
        torch.testing.assert_close(torch.tensor(list(together.metadata["label_probs"].values())),
                                   torch.tensor(list(alone.metadata["label_probs"].values())), rtol=1e-4, atol=1e-6)


def _pad_each(ids: list[torch.Tensor], sides: list[str], pad_id: int):
    """A batch where each row is padded on its own side: a batch whose padding side is unknown."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, (row, side) in enumerate(zip(ids, sides)):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[b, span], mask[b, span] = row, 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return input_ids, mask, positions


@pytest.mark.parametrize("sides", [["left"] * 3, ["right"] * 3, ["left", "right", "left"]],
                         ids=["left", "right", "unknown"])
@pytest.mark.parametrize("arch", DECODER_ARCHITECTURES)
def test_the_classifier_reads_the_last_real_token_whatever_the_padding(arch, sides):
    tokenizer = gpt2_like_tokenizer()
    model = tiny_decoder(arch, "classification", tokenizer)
    explainer = saliency_fast.Explainer(model, tokenizer)
    task = ClassifyTask(explainer)
    ids = [torch.tensor(tokenizer(text)["input_ids"]) for text in TEXTS]
    input_ids, mask, positions = _pad_each(ids, sides, batching.pad_id(tokenizer))
    with torch.no_grad():
        batched = task.outputs(explainer.embedding(input_ids), mask, None, positions)
        for b, row in enumerate(ids):
            # the model's own forward on one unpadded text (it needs no pad id for a batch of one)
            alone = model(inputs_embeds=explainer.embedding(row[None]), attention_mask=torch.ones(1, len(row))).logits
            torch.testing.assert_close(batched[b], alone[0], rtol=1e-5, atol=1e-6)


def test_a_head_not_named_score_runs_row_by_row():
    """CTRL's classifier head is ``classifier``: rows run one at a time, cropped to their real tokens."""
    tokenizer = gpt2_like_tokenizer()
    torch.manual_seed(0)
    model = transformers.CTRLForSequenceClassification(transformers.CTRLConfig(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, dff=64, n_layer=2, n_head=2, num_labels=3,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=None)).eval()
    assert not last_token.has_score_head(model)
    explainer = saliency_fast.Explainer(model, tokenizer)
    ids = [torch.tensor(tokenizer(text)["input_ids"]) for text in TEXTS]
    input_ids, mask, positions = _pad_each(ids, ["left", "right", "right"], batching.pad_id(tokenizer))
    with torch.no_grad():
        batched = ClassifyTask(explainer).outputs(explainer.embedding(input_ids), mask, None, positions)
        for b, row in enumerate(ids):
            torch.testing.assert_close(batched[b], model(input_ids=row[None]).logits[0], rtol=1e-5, atol=1e-6)
    # gradients through CTRL fail in transformers itself (its forward scales inputs_embeds in place);
    # the prediction pass and the attention view run batched
    results = explainer.attribute(TEXTS, method="attention", progress=False)
    for text, together in zip(TEXTS, results):
        alone = explainer.attribute(text, method="attention", progress=False)
        assert together.metadata["label_probs"] == pytest.approx(alone.metadata["label_probs"], rel=1e-5)
        torch.testing.assert_close(together.scores, alone.scores, rtol=1e-5, atol=1e-6, equal_nan=True)


# ------------------------------------------------------------------------------- baselines


def test_the_fallback_warns_once_per_explainer():
    tokenizer = llama3_like_tokenizer()
    model = tiny_decoder("llama", "classification", tokenizer)
    explainer = saliency_fast.Explainer(model, tokenizer)
    with pytest.warns(baselines.BaselineFallbackWarning, match="no pad token, using its eos token") as caught:
        explainer.attribute(TEXTS[0], method="integrated_gradients", n_steps=4)
        explainer.attribute(TEXTS[1], method="occlusion")
    assert len([w for w in caught if issubclass(w.category, baselines.BaselineFallbackWarning)]) == 1
    assert caught[0].filename == __file__  # points at the caller's line
    with pytest.warns(baselines.BaselineFallbackWarning):
        saliency_fast.Explainer(model, tokenizer).attribute(TEXTS[0], method="occlusion")


def test_methods_without_a_baseline_never_check_one():
    tokenizer = gpt2_like_tokenizer()
    explainer = saliency_fast.Explainer(tiny_decoder("gpt2", "classification", tokenizer), tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        for method in ("saliency", "input_x_gradient", "smoothgrad", "attention"):
            result = explainer.attribute(TEXTS[0], method=method, baseline="mask")  # GPT-2 has no mask token
            assert result.metadata["baseline"] is None


@pytest.mark.parametrize("requested,found", [("pad", "eos"), ("eos", "eos"), ("zero", "zero")])
def test_a_requested_kind_the_tokenizer_has_is_used(requested, found):
    tokenizer = llama3_like_tokenizer()
    explainer = saliency_fast.Explainer(tiny_decoder("qwen2", "classification", tokenizer), tokenizer)
    result = explainer.attribute(TEXTS[1], method="integrated_gradients", baseline=requested, n_steps=4)
    assert result.metadata["baseline"] == found


def test_unk_falls_back_to_pad_and_pad_to_unk():
    base = llama3_like_tokenizer()
    with_pad = transformers.PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer,
                                                    pad_token="<|end_of_text|>", bos_token="<|begin_of_text|>")
    found = baselines.resolve(with_pad, "unk")
    assert (found.kind, found.token_id) == ("pad", with_pad.pad_token_id)
    assert baselines.resolve(gpt2_like_tokenizer(), "pad").kind == "unk"
    assert baselines.resolve(llama3_like_tokenizer(), "pad", needs_token=True).kind == "eos"
    nothing = transformers.PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer)
    assert baselines.resolve(nothing, "pad").kind == "zero"
    with pytest.raises(ValueError, match="no pad or unk or eos token"):
        baselines.resolve(nothing, "pad", needs_token=True)  # DIG's path must end at a word


def test_unk_on_a_tokenizer_without_pad_or_unk_names_its_special_tokens():
    tokenizer = llama3_like_tokenizer()
    classifier = saliency_fast.Explainer(tiny_decoder("mistral", "classification", tokenizer), tokenizer)
    lm = saliency_fast.Explainer(tiny_decoder("mistral", "causal_lm", tokenizer), tokenizer)
    expected = r"baseline='unk' but the tokenizer has no unk or pad token .*<\|begin_of_text\|>.*<\|end_of_text\|>"
    with pytest.raises(ValueError, match=expected):
        classifier.attribute(TEXTS[0], method="integrated_gradients", baseline="unk")
    with pytest.raises(ValueError, match=expected):
        lm.attribute_generation(PROMPT, generated_text=FORCED, method="occlusion", baseline="unk")
    with pytest.raises(ValueError, match=r"no mask token .*<\|endoftext\|>"):
        saliency_fast.Explainer(tiny_decoder("gpt2", "classification", gpt2_like_tokenizer()),
                                gpt2_like_tokenizer()).attribute(TEXTS[0], method="occlusion", baseline="mask")


def test_evaluate_uses_the_fallback_token():
    tokenizer = llama3_like_tokenizer()
    explainer = saliency_fast.Explainer(tiny_decoder("llama", "classification", tokenizer), tokenizer)
    table = explainer.evaluate(TEXTS, ["saliency"], ks=(20, 50))
    assert table["method"] == ["saliency"] and len(table["aopc_log_odds"]) == 1
