"""AttnLRP / CP-LRP (saliency_fast.methods.lrp): parity with lxt's rules, the rule context, the
Explainer and generation paths."""

from __future__ import annotations

import pytest
import torch
import transformers

import saliency_fast
from saliency_fast.methods import lrp
from lxt_reference import generation_relevance, lxt_rules
from tiny_models import tiny_bert, tiny_gpt2, word_tokenizer, bert_tokenizer

RULES = ("attnlrp", "cp_lrp")
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),  # fused gate_up_proj
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),  # soft-capped attention and logits
}
OTHER_FAMILIES = {
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
}
PROMPT = "the movie was w5 w17 w3"
FULL = "the movie was w5 w17 w3 very good w40 and w8 not w60"


def lrp_decoder(family: str, seed: int = 0, **overrides):
    config_cls, model_cls = {**FAMILIES, **OTHER_FAMILIES}[family]
    tok = word_tokenizer(200)
    kwargs = dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if family == "gemma":
        kwargs["head_dim"] = 8
    if family == "gemma2":  # caps low enough that their tanh bends the small logits of a tiny model
        kwargs.update(head_dim=8, attn_logit_softcapping=0.05, final_logit_softcapping=0.5, sliding_window=4,
                      query_pre_attn_scalar=1)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong norm rule cannot hide
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model, tok


def rel_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.equal(torch.isnan(ours), torch.isnan(expected))
    ours, expected = torch.nan_to_num(ours.double()), torch.nan_to_num(expected.double())
    return float((ours - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rule", RULES)
def test_generation_equals_lxt_rules_per_token_loop(family, rule):
    model, tok = lrp_decoder(family)
    explainer = saliency_fast.Explainer(model, tok)
    result = explainer.attribute_generation(PROMPT, generated_text=FULL, method=rule, aggregate="sum",
                                            progress=False)
    n_prompt = result.metadata["n_prompt_tokens"]
    expected = generation_relevance(model, result.token_ids, n_prompt, family, rule)
    assert rel_error(result.scores, expected) <= 1e-4
    # the reference differs from plain input x gradient, so the parity is not a coincidence
    plain = explainer.attribute_generation(PROMPT, generated_text=FULL, method="input_x_gradient", aggregate="sum",
                                           progress=False)
    assert rel_error(plain.scores, expected) > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rule", RULES)
def test_captum_style_class_equals_lxt_rules(family, rule):
    model, _ = lrp_decoder(family, seed=1)
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (2, 9))).detach()

    def last_logits(e):
        return model(inputs_embeds=e, use_cache=False).logits[:, -1]

    ours, delta = saliency_fast.AttnLRP(model, last_logits, rule=rule).attribute(
        embeds, target=7, return_convergence_delta=True)
    leaf = embeds.clone().requires_grad_(True)
    with lxt_rules(model, family, rule):
        last_logits(leaf)[:, 7].sum().backward()
    expected = (leaf * leaf.grad).detach()
    assert rel_error(ours, expected) <= 1e-4
    with torch.no_grad():
        logits = last_logits(embeds)[:, 7]
    torch.testing.assert_close(delta, ours.sum((1, 2)) - logits, rtol=1e-5, atol=1e-6)


def test_gemma2_attention_soft_capping_alone_gets_the_identity_rule():
    """Without final soft-capping only the attention call caps (the model's forward is not wrapped)."""
    model, _ = lrp_decoder("gemma2", seed=2, final_logit_softcapping=None)
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (1, 9))).detach()

    def last_logits(e):
        return model(inputs_embeds=e, use_cache=False).logits[:, -1]

    ours = saliency_fast.AttnLRP(model, last_logits).attribute(embeds, target=3)
    leaf = embeds.clone().requires_grad_(True)
    with lxt_rules(model, "gemma2", "attnlrp"):
        last_logits(leaf)[:, 3].sum().backward()
    assert rel_error(ours, (leaf * leaf.grad).detach()) <= 1e-4


def test_cp_lrp_conserves_the_logit_of_a_bias_free_llama():
    """With the gradient stopped at the softmax and the gate, every remaining op is linear in the
    input with the detached factors held fixed, so relevance sums exactly to the logit."""
    model, tok = lrp_decoder("llama")
    result = saliency_fast.Explainer(model, tok).attribute_generation(
        PROMPT, generated_text=FULL, method="cp_lrp", aggregate="sum", progress=False)
    found = result.metadata["conservation"]
    torch.testing.assert_close(torch.tensor(found["relevance_sum"]), torch.tensor(found["score"]),
                               rtol=1e-4, atol=1e-5)
    assert len(found["score"]) == len(result.targets)
    torch.testing.assert_close(torch.nansum(result.scores, 1), torch.tensor(found["relevance_sum"]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["mistral", "qwen3", "gemma"])
def test_other_families_run_with_rules_and_cp_lrp_conserves(family):
    model, tok = lrp_decoder(family)
    explainer = saliency_fast.Explainer(model, tok)
    for rule in RULES:
        result = explainer.attribute_generation(PROMPT, generated_text=FULL, method=rule, aggregate="sum",
                                                progress=False)
        assert torch.isfinite(result.scores[result.mask]).all()
    found = result.metadata["conservation"]  # cp_lrp, last
    torch.testing.assert_close(torch.tensor(found["relevance_sum"]), torch.tensor(found["score"]),
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("rule", RULES)
def test_gpt2_generation_equals_lxt_rules_without_the_described_pass(rule):
    """GPT-2 generation normally takes the described pass, which knows no rules: under them the
    engine runs autograd, and equals lxt's GPT-2 rules (LayerNorm, MLP activation, attention)."""
    model, tok = tiny_gpt2()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    explainer = saliency_fast.Explainer(model, tok)
    kwargs = dict(generated_text=FULL, aggregate="sum", progress=False)
    relevance = explainer.attribute_generation(PROMPT, method=rule, **kwargs)
    expected = generation_relevance(model, relevance.token_ids, relevance.metadata["n_prompt_tokens"], "gpt2", rule)
    assert rel_error(relevance.scores, expected) <= 1e-4
    assert relevance.metadata["engine"]["name"] == "autograd"
    plain = explainer.attribute_generation(PROMPT, method="input_x_gradient", **kwargs)
    assert rel_error(plain.scores, expected) > 1e-2


def test_classification_on_bert_reports_conservation_and_matches_the_class():
    model = tiny_bert()
    explainer = saliency_fast.Explainer(model, bert_tokenizer())
    texts = ["a great movie", "not good at all, really"]
    results = explainer.attribute(texts, method="attnlrp", aggregate="sum", target=1)
    ids = bert_tokenizer()(texts[1], return_tensors="pt")
    embeds = model.get_input_embeddings()(ids["input_ids"]).detach()

    def forward(e):
        return model(inputs_embeds=e, attention_mask=ids["attention_mask"]).logits

    expected, delta = lrp.AttnLRP(model, forward).attribute(embeds, target=1, return_convergence_delta=True)
    kept = results[1].mask[0]
    torch.testing.assert_close(results[1].scores[0][kept], expected.sum(-1)[0][kept], rtol=1e-4, atol=1e-6)
    conservation = results[1].metadata["conservation"]
    torch.testing.assert_close(conservation["relevance_sum"][0], float(expected.sum()), rtol=1e-4, atol=1e-6)
    assert conservation["relevance_sum"][0] - conservation["score"][0] == pytest.approx(float(delta[0]), abs=1e-5)


def test_rules_change_gradients_and_leave_forward_values_alone():
    model, _ = lrp_decoder("llama")
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (1, 6))).detach()
    with torch.no_grad():
        before = model(inputs_embeds=embeds).logits
    with lrp.lrp_rules(model, "attnlrp"), torch.no_grad():
        during = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-6)


def _structure(model):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return [(n, type(m)) for n, m in model.named_modules()], dict(ALL_ATTENTION_FUNCTIONS._local_mapping)


def test_the_model_is_restored_on_exit_and_on_error():
    model, _ = lrp_decoder("llama")
    before = _structure(model)
    with lrp.lrp_rules(model, "attnlrp"):
        assert _structure(model) != before
    assert _structure(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with lrp.lrp_rules(model, "cp_lrp"):
            raise RuntimeError("boom")
    assert _structure(model) == before
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (1, 4))).detach()
    with pytest.raises(ValueError):  # an error inside the method's own forward
        lrp.AttnLRP(model, lambda e: model(inputs_embeds=e).logits[:, -1]).attribute(embeds, target=10**6)
    assert _structure(model) == before


def test_nested_rules_on_one_model_are_refused_and_leave_no_trace():
    model, _ = lrp_decoder("llama")
    before = _structure(model)
    with lrp.lrp_rules(model, "attnlrp"):
        with pytest.raises(RuntimeError, match="already applied"):
            with lrp.lrp_rules(model, "attnlrp"):
                pass
    assert _structure(model) == before


def test_other_models_are_untouched_while_rules_are_on():
    model, _ = lrp_decoder("llama")
    other, _ = lrp_decoder("llama", seed=3)
    embeds = other.get_input_embeddings()(torch.randint(0, 200, (1, 5))).detach()
    plain = saliency_fast.InputXGradient(lambda e: other(inputs_embeds=e).logits[:, -1]).attribute(embeds, target=3)
    with lrp.lrp_rules(model, "attnlrp"):
        during = saliency_fast.InputXGradient(lambda e: other(inputs_embeds=e).logits[:, -1]).attribute(embeds,
                                                                                                       target=3)
    torch.testing.assert_close(during, plain)


def test_a_norm_without_a_known_scale_is_an_error():
    class OddNorm(torch.nn.Module):  # its class name says norm, its scale is a division by abs-mean
        def forward(self, x):
            return x / x.abs().mean(-1, keepdim=True)

    OddNorm.__name__ = "OddRMSNorm"
    model, _ = lrp_decoder("llama")
    model.model.norm = OddNorm()
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (1, 4))).detach()
    with pytest.raises(NotImplementedError, match="OddRMSNorm"):
        lrp.AttnLRP(model, lambda e: model(inputs_embeds=e).logits[:, -1]).attribute(embeds, target=1)


def test_a_model_without_interface_attention_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
    with pytest.raises(NotImplementedError, match="AttentionInterface"):
        lrp.AttnLRP(model).attribute(torch.randn(3, 4), target=0)


def test_bad_rule_is_a_clear_error():
    model, _ = lrp_decoder("llama")
    with pytest.raises(ValueError, match="rule must be one of"):
        lrp.lrp_rules(model, "lrp")
    with pytest.raises(TypeError, match="model must be"):
        lrp.AttnLRP(lambda x: x)


def test_encoder_decoder_rules_reach_source_target_and_t5_gated_mlp():
    """flan-T5-style (gated-GELU MLP, RMS norm, no biases): CP-LRP conserves each target's logit over
    source and target prefix together, which needs the rules on the encoder, the decoder, the
    cross-attention and the gate; BART (biases, LayerNorm) runs with both rule sets."""
    from tiny_models import tiny_seq2seq

    model, tok = tiny_seq2seq("t5", feed_forward_proj="gated-gelu")
    explainer = saliency_fast.Explainer(model, tok, exclude_special_tokens=False)  # EOS's relevance shown too
    kwargs = dict(generated_text="le film est bon", aggregate="sum", progress=False)
    result = explainer.attribute_generation("the movie was good", method="cp_lrp", **kwargs)
    found = result.metadata["conservation"]
    torch.testing.assert_close(torch.tensor(found["relevance_sum"]), torch.tensor(found["score"]),
                               rtol=1e-4, atol=1e-5)
    total = torch.nansum(result.source_scores, 1) + torch.nansum(result.scores, 1)
    torch.testing.assert_close(total, torch.tensor(found["relevance_sum"]), rtol=1e-4, atol=1e-5)
    model, tok = tiny_seq2seq("bart")
    for rule in RULES:
        result = saliency_fast.Explainer(model, tok).attribute_generation("the movie was good", method=rule, **kwargs)
        assert torch.isfinite(result.scores[result.mask]).all()


@pytest.mark.parametrize("build", [lambda: lrp_decoder("llama", attention_dropout=0.5)[0],  # in the attention call
                                   lambda: tiny_gpt2(resid_pdrop=0.5, embd_pdrop=0.5)[0]])  # nn.Dropout modules
def test_dropout_is_off_under_the_rules_even_in_train_mode(build):
    model = build()
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (1, 6))).detach()

    def relevance():
        return lrp.AttnLRP(model, lambda e: model(inputs_embeds=e).logits[:, -1]).attribute(embeds, target=4)

    expected = relevance()
    model.train()
    torch.testing.assert_close(relevance(), expected)
    torch.testing.assert_close(relevance(), expected)


@pytest.mark.parametrize("rule", RULES)
def test_eager_attention_gets_the_rules_as_sdpa_does(rule):
    model, _ = lrp_decoder("llama")
    embeds = model.get_input_embeddings()(torch.randint(0, 200, (1, 6))).detach()
    method = lrp.AttnLRP(model, lambda e: model(inputs_embeds=e).logits[:, -1], rule=rule)
    sdpa = method.attribute(embeds, target=4)
    model.set_attn_implementation("eager")
    torch.testing.assert_close(method.attribute(embeds, target=4), sdpa, rtol=1e-5, atol=1e-7)
    assert rel_error(saliency_fast.InputXGradient(method.forward_func).attribute(embeds, target=4), sdpa) > 1e-2
