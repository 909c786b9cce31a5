"""Causal-LM generation attribution: the single causal pass against inseq and a naive per-prefix loop.

The naive loop here is the definition: for each generated token ``t`` it runs the model on the
prefix ``0 .. t-1`` alone (``model(inputs_embeds=prefix).logits[-1]``), as inseq does, and takes
the gradients of that one score. The engine must give the same per-step matrices from its shared
forwards, chunked or not, with the logit-only head or the full one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import saliency_fast
from saliency_fast.hf import causal_pass, decoder_pass, generation, generation_methods, generation_options, lm_head, probe_cache
from saliency_fast.hf.explainer import NonFiniteAttributionError
from tiny_models import tiny_gpt2

PROMPT = "the movie was"
FULL = "the movie was good w5 w7 bad i w12"
N_PROMPT, N_TOKENS = 3, 9


@pytest.fixture(scope="module")
def explainer():
    model, tok = tiny_gpt2()
    return saliency_fast.Explainer(model, tok)


def run(explainer, method="saliency", generated_text=FULL, **kwargs):
    kwargs.setdefault("progress", False)
    return generation.attribute_generation(explainer, PROMPT, generated_text=generated_text, method=method, **kwargs)


# ----------------------------------------------------------------------------- naive reference


def full_ids(explainer, text=FULL):
    return torch.tensor(explainer.tokenizer(text)["input_ids"])


def prefix_score(model, prefix, token, target):
    logits = model(inputs_embeds=prefix.unsqueeze(0)).logits[0, -1].float()
    logprob = logits.log_softmax(-1)[token]
    return {"logit": logits[token], "prob": logprob.exp(), "logprob": logprob, "loss": -logprob}[target]


def naive(explainer, method, target="logit", baseline_id=None, alphas=None, weights=None, noise=None):
    """``[T, N, D]`` (or ``[T, N]`` for occlusion) attributions, one prefix at a time."""
    model = explainer.model
    ids = full_ids(explainer)
    x = explainer.embedding(ids).detach()
    b = None if baseline_id is None else explainer.embedding(torch.full_like(ids, baseline_id)).detach()
    per_token = method == "occlusion"
    out = torch.full((N_TOKENS - N_PROMPT, N_TOKENS) + (() if per_token else (x.shape[1],)), float("nan"))

    def grad(prefix, token):
        prefix = prefix.clone().requires_grad_(True)
        return torch.autograd.grad(prefix_score(model, prefix, token, target), prefix)[0]

    for row, t in enumerate(range(N_PROMPT, N_TOKENS)):
        xp, token = x[:t], int(ids[t])
        if method == "saliency":
            out[row, :t] = grad(xp, token)
        elif method == "input_x_gradient":
            out[row, :t] = grad(xp, token) * xp
        elif method == "integrated_gradients":
            bp = b[:t]
            total = sum(w * grad(bp + a * (xp - bp), token) for a, w in zip(alphas, weights))
            out[row, :t] = (xp - bp) * total
        elif method in ("smoothgrad", "vargrad"):
            grads = torch.stack([grad(xp + n[:t], token) for n in noise])
            out[row, :t] = grads.mean(0) if method == "smoothgrad" else grads.var(0, unbiased=False)
        elif method == "occlusion":
            with torch.no_grad():
                reference = prefix_score(model, xp, token, target)
                for j in range(t):
                    occluded = xp.clone()
                    occluded[j] = b[j]
                    out[row, j] = reference - prefix_score(model, occluded, token, target)
    return out


def gauss_legendre(n):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return [0.5 * (float(a) + 1) for a in nodes], [0.5 * float(w) for w in weights]


def assert_rows_close(ours, expected, rtol=1e-4):
    """Same NaN pattern; per row, max |ours - expected| <= rtol * max |expected|."""
    assert ours.shape == expected.shape
    assert torch.equal(torch.isnan(ours), torch.isnan(expected))
    for row in range(ours.shape[0]):
        a, e = torch.nan_to_num(ours[row].double()), torch.nan_to_num(expected[row].double())
        scale = e.abs().max().item()
        assert scale > 0
        assert (a - e).abs().max().item() <= rtol * scale, f"row {row}: {(a - e).abs().max().item()} vs {scale}"


# ------------------------------------------------------------------------- against the naive loop


@pytest.mark.parametrize("target", ["logit", "prob", "logprob", "loss"])
def test_saliency_equals_naive_loop_for_every_target(explainer, target):
    ours = run(explainer, "saliency", target=target, aggregate="none")
    assert_rows_close(ours.scores, naive(explainer, "saliency", target))


def test_input_x_gradient_equals_naive_loop(explainer):
    ours = run(explainer, "input_x_gradient", target="logprob", aggregate="none")
    assert_rows_close(ours.scores, naive(explainer, "input_x_gradient", "logprob"))


def test_integrated_gradients_equal_naive_loop_and_complete(explainer):
    unk = explainer.tokenizer.unk_token_id
    ours = run(explainer, "integrated_gradients", target="prob", aggregate="none", baseline="unk", n_steps=6)
    alphas, weights = gauss_legendre(6)
    assert_rows_close(ours.scores, naive(explainer, "integrated_gradients", "prob", unk, alphas, weights))
    errors = ours.metadata["completeness_error"]
    assert len(errors) == N_TOKENS - N_PROMPT and ours.metadata["n_steps"] == 6
    # with many steps the sum of attributions reaches F(x) - F(baseline)
    fine = run(explainer, "integrated_gradients", target="logit", aggregate="sum", baseline="unk", n_steps=64)
    assert max(fine.metadata["completeness_error"]) < 1e-3


def test_integrated_gradients_auto_steps_reach_the_tolerance(explainer):
    result = run(explainer, "integrated_gradients", target="logit", aggregate="sum", baseline="unk", n_steps="auto",
                 rtol=1e-3)
    steps, errors = result.metadata["n_steps"], result.metadata["completeness_error"]
    assert len(steps) == N_TOKENS - N_PROMPT and set(steps) <= {3, 7, 15, 31, 63, 127}
    ids = full_ids(explainer)
    x = explainer.embedding(ids).detach()
    b = explainer.embedding(torch.full_like(ids, explainer.tokenizer.unk_token_id)).detach()
    with torch.no_grad():
        for row, t in enumerate(range(N_PROMPT, N_TOKENS)):
            change = prefix_score(explainer.model, x[:t], int(ids[t]), "logit") - prefix_score(
                explainer.model, b[:t], int(ids[t]), "logit")
            assert abs(float(result.scores[row, :t].sum()) - float(change)) == pytest.approx(errors[row], abs=1e-5)
            assert errors[row] <= 1e-3 * abs(float(change))


def test_discretized_integrated_gradients_equal_the_method_on_each_prefix(explainer):
    from saliency_fast.methods import dig

    options = {"n_steps": 4, "n_neighbors": 40}
    ours = run(explainer, "discretized_integrated_gradients", target="logit", aggregate="none", baseline="pad",
               **options)
    ids, pad = full_ids(explainer), explainer.tokenizer.pad_token_id
    expected = torch.full_like(ours.scores, float("nan"))
    for row, t in enumerate(range(N_PROMPT, N_TOKENS)):
        def forward(embeds, t=t):
            return explainer.model(inputs_embeds=embeds).logits[:, -1, ids[t]]

        found = dig.dig_attribute_embeddings(forward, ids[:t].unsqueeze(0), explainer.embedding.weight, pad,
                                             return_convergence_delta=True, **options)
        expected[row, :t] = found.attributions[0]
        assert ours.metadata["completeness_error"][row] == pytest.approx(abs(float(found.convergence_delta[0])),
                                                                          rel=1e-4, abs=1e-6)
    assert_rows_close(ours.scores, expected)
    assert ours.metadata["n_steps"] == found.n_points - 1


@pytest.mark.parametrize("kind", ["smoothgrad", "vargrad"])
def test_noise_tunnel_equals_naive_loop_with_same_noise(explainer, kind):
    ours = run(explainer, kind, target="logit", aggregate="none", nt_samples=3, stdevs=0.05, seed=7)
    noise = generation_methods.sample_noise(3, (N_TOKENS, explainer.embedding.embedding_dim), 0.05, 7)
    assert_rows_close(ours.scores, naive(explainer, kind, "logit", noise=noise), rtol=1e-4)


def test_occlusion_equals_naive_leave_one_out(explainer):
    pad = explainer.tokenizer.pad_token_id
    ours = run(explainer, "occlusion", target="logprob", baseline="pad", perturbations_per_eval=3)
    assert ours.scores.shape == (N_TOKENS - N_PROMPT, N_TOKENS)
    assert ours.metadata["aggregate"] is None
    assert_rows_close(ours.scores, naive(explainer, "occlusion", "logprob", pad))


def test_attention_rows_equal_each_prefix(explainer):
    ours = run(explainer, "attention", layers="last")
    mean = run(explainer, "attention", layers="mean")
    model, ids = explainer.model, full_ids(explainer)
    from saliency_fast.hf.checks import eager_attention

    for row, t in enumerate(range(N_PROMPT, N_TOKENS)):
        with eager_attention(model), torch.no_grad():
            att = model(input_ids=ids[:t].unsqueeze(0), output_attentions=True).attentions
        last = att[-1][0, :, -1].mean(0)
        layers = torch.stack([a[0, :, -1].mean(0) for a in att])
        torch.testing.assert_close(ours.scores[row, :t], last, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean.scores[row, :t], layers.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.layer_scores[row, :, :t], layers, rtol=1e-5, atol=1e-6)
        assert torch.isnan(ours.scores[row, t:]).all()


@pytest.mark.parametrize("aggregate", ["sum", "l2", "abs_sum", "dot"])
def test_aggregations_reduce_the_embedding_dim(explainer, aggregate):
    raw = run(explainer, "saliency", aggregate="none").scores
    ours = run(explainer, "saliency", aggregate=aggregate).scores
    x = explainer.embedding(full_ids(explainer)).detach()
    expected = {
        "sum": raw.sum(-1), "l2": raw.norm(dim=-1), "abs_sum": raw.abs().sum(-1), "dot": (raw * x).sum(-1),
    }[aggregate]
    assert_rows_close(ours, expected, rtol=1e-5)


# ------------------------------------------------------------------------------- against inseq


@pytest.fixture(scope="module")
def inseq_model():
    inseq = pytest.importorskip("inseq")
    model, tok = tiny_gpt2()  # a separate copy: inseq configures the tokenizer it is given
    return lambda method: inseq.load_model(model, method, tokenizer=tok)


def inseq_matrix(inseq_model, method, with_view=False, **kwargs):
    """inseq's raw per-step attributions ``[T, N, D]`` (and its default view ``[T, N]``)."""
    out = inseq_model(method).attribute(
        PROMPT, FULL, attributed_fn="probability", show_progress=False, **kwargs
    )
    seq = out.sequence_attributions[0]
    assert [t.token for t in seq.target] == FULL.split()
    raw = seq.target_attributions.permute(1, 0, 2).float()  # [N, T, D] -> [T, N, D]
    return (raw, seq.aggregate().target_attributions.T.float()) if with_view else raw


def test_saliency_matches_inseq(explainer, inseq_model):
    expected, view = inseq_matrix(inseq_model, "saliency", with_view=True)
    ours = run(explainer, "saliency", target="prob", aggregate="none").scores
    assert_rows_close(ours.abs(), expected)  # captum's Saliency (inseq's) returns |gradient|
    l2 = run(explainer, "saliency", target="prob", aggregate="l2")
    assert_rows_close(l2.scores, expected.norm(dim=-1))
    # inseq's default view: the L2 norm over the embedding dim, normalised to sum to one per step
    assert_rows_close(l2.normalize("sum_to_one").scores, view)


def test_input_x_gradient_matches_inseq(explainer, inseq_model):
    expected = inseq_matrix(inseq_model, "input_x_gradient")
    ours = run(explainer, "input_x_gradient", target="prob", aggregate="none").scores
    assert_rows_close(ours, expected)


def test_integrated_gradients_match_inseq(explainer, inseq_model):
    expected = inseq_matrix(inseq_model, "integrated_gradients", n_steps=8)
    ours = run(explainer, "integrated_gradients", target="prob", aggregate="none", baseline="unk", n_steps=8)
    assert_rows_close(ours.scores, expected)


# ------------------------------------------------------------------------------ engine options


@pytest.mark.parametrize("target,head", [("logit", "rows"), ("prob", "targets")])
def test_split_head_equals_the_models_own_head(explainer, target, head):
    split = run(explainer, "saliency", target=target, aggregate="none")
    full = run(explainer, "saliency", target=target, aggregate="none", lm_head="full")
    assert split.metadata["lm_head"] == head and full.metadata["lm_head"] == "model"
    assert_rows_close(split.scores, full.scores, rtol=1e-5)


def test_a_head_the_split_cannot_reproduce_falls_back_to_the_model():
    from saliency_fast.hf.lm_head import CausalLMScorer

    model, tok = tiny_gpt2()
    forward = model.forward
    model.forward = lambda *a, **k: _scaled(forward(*a, **k))  # a final logit scale the split would miss
    assert not CausalLMScorer(model).splits
    explainer = saliency_fast.Explainer(model, tok)
    result = run(explainer, "saliency", target="logit", aggregate="sum")
    model.forward = forward
    assert result.metadata["lm_head"] == "model"
    plain = run(saliency_fast.Explainer(model, tok), "saliency", target="logit", aggregate="sum")
    assert_rows_close(result.scores, 2 * plain.scores, rtol=1e-5)


def _scaled(output):
    output.logits = 2 * output.logits
    return output


def test_the_split_probe_catches_a_final_soft_cap_on_small_logits():
    from saliency_fast.hf.lm_head import CausalLMScorer

    model, _ = tiny_gpt2()
    forward = model.forward

    def capped(*args, **kwargs):
        output = forward(*args, **kwargs)
        output.logits = 30 * torch.tanh(output.logits / 30)  # Gemma-2 style soft-capping
        return output

    model.forward = capped
    assert not CausalLMScorer(model).splits


@pytest.mark.parametrize("hand_written", [True, False])
def test_saliency_reads_the_head_once_for_all_chunks(explainer, hand_written, monkeypatch):
    """The head's weights (the vocabulary projection) are read once, not once per chunk, with the
    same result: in the described pass (its one forward gives every target's hidden state) and
    in the generic one (chunks run longest first, and that forward gives them)."""
    if not hand_written:
        monkeypatch.setattr(decoder_pass, "MAX_STATE_BYTES", 0)
    run(explainer, "saliency", target="prob")  # the once-per-model probes call the head too
    head = explainer.model.get_output_embeddings()
    calls = []
    handle = head.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    try:
        assert (decoder_pass.select(explainer.model, 1, N_TOKENS, None).engine is not None) == hand_written
        ours = run(explainer, "saliency", target="prob", aggregate="none", target_batch_size=1)
    finally:
        handle.remove()
    assert calls == [N_TOKENS - N_PROMPT]  # one call, every target's position; 6 chunks ran
    assert_rows_close(ours.scores, naive(explainer, "saliency", "prob"))


def test_the_last_mlp_runs_at_the_target_rows_only(explainer, monkeypatch):
    """The last block's MLP is row-wise and only row-wise ops follow it: in the generic gradient
    passes it runs at the chunk's target positions only, and the hidden states there stay exact."""
    from saliency_fast.hf import lm_head

    monkeypatch.setattr(decoder_pass, "select", lambda *args: decoder_pass.Selection(None, "off"))
    model = explainer.model
    mlp = model.transformer.h[-1].mlp
    assert probe_cache.probed(model, lm_head._probe_last_mlp) is mlp
    rows_seen = []
    handle = mlp.c_fc.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape[-2]))
    try:
        ours = run(explainer, "saliency", target="logprob", aggregate="none", target_batch_size=2)
    finally:
        handle.remove()
    # 6 targets in chunks of 2, longest first: that forward also reads every target's hidden state
    # for the shared head gradients; never the prefix's length (9 tokens)
    assert rows_seen == [6, 2, 2]
    assert_rows_close(ours.scores, naive(explainer, "saliency", "logprob"))
    x = explainer.embedding(full_ids(explainer)).detach().unsqueeze(0)
    scorer = lm_head.CausalLMScorer(model)
    rows = torch.tensor([2, 5])
    with torch.no_grad():
        full, cut = scorer.hidden(x), scorer.hidden(x, rows=rows)
    torch.testing.assert_close(cut[:, rows], full[:, rows], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(cut[:, 3], full[:, 3])  # elsewhere the MLP really was skipped


def test_a_last_mlp_shared_with_another_block_is_never_cut():
    from saliency_fast.hf import lm_head

    model, _ = tiny_gpt2()
    model.transformer.h[0].mlp = model.transformer.h[-1].mlp  # tied blocks (ALBERT-style sharing)
    assert probe_cache.probed(model, lm_head._probe_last_mlp) is None


@pytest.mark.parametrize("method,kwargs", [
    ("saliency", {}),
    ("integrated_gradients", {"n_steps": 5, "baseline": "unk"}),
    ("vargrad", {"nt_samples": 3, "stdevs": 0.05, "seed": 1}),
])
def test_chunked_equals_unchunked(explainer, method, kwargs):
    whole = run(explainer, method, aggregate="none", max_batch_tokens=10**6, target_batch_size=64, **kwargs)
    small = dict(kwargs, **({"internal_batch_size": 2} if method == "integrated_gradients" else {}))
    if method == "vargrad":
        small["nt_samples_batch_size"] = 2
    chunked = run(explainer, method, aggregate="none", max_batch_tokens=1, target_batch_size=1, **small)
    # the chunk sizes also pick the attention kernel (math for small batches, flash for large): only
    # rounding differs, but VarGrad's E[g^2] - E[g]^2 at stdev 0.05 cancels about two digits of it
    assert_rows_close(chunked.scores, whole.scores, rtol=1e-4 if method == "vargrad" else 1e-5)


def test_plan_chunks_truncates_each_chunk_to_its_prefix():
    from saliency_fast.hf.causal_pass import plan_chunks

    chunks = plan_chunks(list(range(3, 11)), rows=2, max_batch_tokens=40, max_targets=4)
    assert [(c.start, c.end, c.length) for c in chunks] == [(0, 3, 6), (3, 5, 8), (5, 7, 10), (7, 8, 11)]
    for c in chunks:
        assert c.size == 1 or c.size * 2 * c.length <= 40


def test_bfloat16_autocast_is_close_to_float32(explainer):
    exact = run(explainer, "integrated_gradients", aggregate="l2", baseline="unk", n_steps=8)
    fast = run(explainer, "integrated_gradients", aggregate="l2", baseline="unk", n_steps=8, dtype=torch.bfloat16)
    assert fast.metadata["dtype"] == "bfloat16" and fast.scores.dtype == torch.float32
    a, b = fast.scores[fast.mask], exact.scores[exact.mask]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


# ---------------------------------------------------------------------------- result and decoding


def test_result_layout_and_metadata(explainer):
    result = run(explainer, "saliency", target="logprob")
    assert result.tokens == FULL.split() and result.targets == FULL.split()[N_PROMPT:]
    assert result.scores.shape == (N_TOKENS - N_PROMPT, N_TOKENS)
    expected_mask = torch.arange(N_TOKENS).unsqueeze(0) < torch.arange(N_PROMPT, N_TOKENS).unsqueeze(1)
    assert torch.equal(result.mask, expected_mask)
    assert torch.isnan(result.scores[~expected_mask]).all() and torch.isfinite(result.scores[expected_mask]).all()
    meta = result.metadata
    assert meta["task"] == "generate" and meta["n_prompt_tokens"] == N_PROMPT and meta["generated_text"] == FULL
    assert meta["method"] == "saliency" and meta["target"] == "logprob" and meta["aggregate"] == "l2"
    assert meta["completeness_error"] is None and meta["backend"] == saliency_fast.ops.active_backend()
    assert result.token_ids == full_ids(explainer).tolist() and result.target_ids == result.token_ids[N_PROMPT:]


def test_greedy_generation_takes_the_argmax_each_step(explainer):
    result = generation.attribute_generation(explainer, PROMPT, max_new_tokens=4, progress=False)
    ids = result.token_ids
    assert len(ids) == N_PROMPT + 4 and result.metadata["forced"] is False
    with torch.no_grad():
        logits = explainer.model(input_ids=torch.tensor([ids])).logits[0]
    for t in range(N_PROMPT, len(ids)):
        assert ids[t] == int(logits[t - 1].argmax())


def test_the_explainer_delegates_generation(explainer):
    result = explainer.attribute_generation(PROMPT, generated_text=FULL, method="input_x_gradient", aggregate="sum")
    direct = run(explainer, "input_x_gradient", aggregate="sum")
    assert torch.equal(result.mask, direct.mask)
    assert_rows_close(result.scores, direct.scores, rtol=1e-6)


def test_the_explainer_passes_engine_options_through(explainer):
    """max_batch_tokens / target_batch_size / lm_head / progress are generation's own options, not the
    method's: the Explainer must hand them over, and they must not change the result."""
    options = dict(max_batch_tokens=64, target_batch_size=2, lm_head="full", progress=False)
    result = explainer.attribute_generation(PROMPT, generated_text=FULL, method="integrated_gradients", n_steps=4,
                                            **options)
    direct = run(explainer, "integrated_gradients", n_steps=4)
    assert_rows_close(result.scores, direct.scores, rtol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        explainer.attribute_generation(PROMPT, generated_text=FULL, max_batch_tokens=0)


def test_max_new_tokens_cuts_a_forced_continuation(explainer):
    result = run(explainer, "saliency", max_new_tokens=2)
    assert result.tokens == FULL.split()[: N_PROMPT + 2] and len(result.targets) == 2


def test_special_tokens_are_excluded_and_keep_their_embedding(explainer):
    text = "the movie was <eos> good bad"
    result = generation.attribute_generation(
        explainer, PROMPT, generated_text=text, method="integrated_gradients", baseline="unk", n_steps=4,
        aggregate="sum", progress=False,
    )
    eos = result.tokens.index("<eos>")
    assert not result.mask[:, eos].any() and torch.isnan(result.scores[:, eos]).all()
    assert result.targets[0] == "<eos>" and result.mask[0, :N_PROMPT].all()


def test_non_finite_gradients_are_reported():
    model, tok = tiny_gpt2()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    explainer = saliency_fast.Explainer(model, tok)
    with pytest.raises(NonFiniteAttributionError, match="NaN"):
        run(explainer, "saliency")


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,error,match", [
    ({"prompt": ""}, ValueError, "prompt"),
    ({"prompt": "   "}, ValueError, "prompt"),
    ({"max_new_tokens": 0, "generated_text": None}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": -2, "generated_text": None}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": 2.5, "generated_text": None}, ValueError, "max_new_tokens"),
    ({"max_new_tokens": True, "generated_text": None}, ValueError, "max_new_tokens"),
    ({"generated_text": None}, ValueError, "max_new_tokens"),
    ({"generated_text": "a movie was good"}, ValueError, "prompt's tokens first"),
    ({"generated_text": PROMPT}, ValueError, "adds no token"),
    ({"generated_text": 3}, TypeError, "generated_text"),
    ({"generated_text": PROMPT + " w9" * 300}, ValueError, "at most 256"),
    ({"max_new_tokens": 300, "generated_text": None}, ValueError, "at most 256"),
    ({"target": "probability"}, ValueError, "target"),
    ({"method": "lime"}, ValueError, "method"),
    ({"method": "sequential_integrated_gradients"}, ValueError, "not available for generation"),
    ({"method": "discretized_integrated_gradients", "baseline": "zero"}, ValueError, "baseline"),
    ({"aggregate": "max"}, ValueError, "aggregate"),
    ({"baseline": "random"}, ValueError, "baseline"),
    ({"method": "integrated_gradients", "baseline": torch.zeros(5, 32)}, ValueError, "rows"),
    ({"method": "integrated_gradients", "n_steps": 0}, ValueError, "n_steps"),
    ({"method": "integrated_gradients", "n_steps": "many"}, ValueError, "n_steps"),
    ({"method": "integrated_gradients", "n_steps": "auto", "quadrature": "riemann_left"}, ValueError, "quadrature"),
    ({"method": "attention", "layers": "first"}, ValueError, "layers"),
    ({"method": "saliency", "n_steps": 3}, TypeError, "n_steps"),
    ({"lm_head": "rows"}, ValueError, "lm_head"),
    ({"dtype": "bf16"}, ValueError, "dtype"),
    ({"max_batch_tokens": 0}, ValueError, "max_batch_tokens"),
])
def test_bad_input_is_a_clear_error(explainer, kwargs, error, match):
    args = {"prompt": PROMPT, "generated_text": FULL, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        generation.attribute_generation(explainer, **args)


def test_default_token_budget_keeps_the_bytes_of_float32():
    """bf16/fp16 intermediates take half the bytes, so the default budget doubles; a given one is kept."""
    assert causal_pass.default_max_batch_tokens(None) == causal_pass.DEFAULT_MAX_BATCH_TOKENS
    for dtype in (torch.bfloat16, torch.float16):
        assert causal_pass.default_max_batch_tokens(dtype) == 2 * causal_pass.DEFAULT_MAX_BATCH_TOKENS
        assert generation._engine_options({"dtype": dtype})["max_batch_tokens"] == 2 * causal_pass.DEFAULT_MAX_BATCH_TOKENS
    assert generation._engine_options({})["max_batch_tokens"] == causal_pass.DEFAULT_MAX_BATCH_TOKENS
    assert generation._engine_options({"dtype": torch.bfloat16, "max_batch_tokens": 96})["max_batch_tokens"] == 96


def test_default_rows_fill_the_budget_in_even_batches():
    from types import SimpleNamespace

    cp = SimpleNamespace(max_batch_tokens=8192, target_batch_size=16, prefix_length=95)  # budget: 5 points
    assert generation_options.default_rows(cp, 16) == 4  # 4 x 4, not 5 + 5 + 5 + 1
    assert generation_options.default_rows(cp, 3) == 3 and generation_options.default_rows(cp, 10) == 5
    assert generation_options.default_rows(SimpleNamespace(max_batch_tokens=10, target_batch_size=16, prefix_length=95), 16) == 1
    assert generation_options.default_rows(cp, 16, targets=8) == 8  # the described pass's chunks: 10 points fit, 8 + 8


def test_the_described_pass_takes_fewer_targets_per_backward(explainer):
    cp = causal_pass.CausalPass(
        scorer=lm_head.CausalLMScorer(explainer.model), embeds=torch.randn(9, 32), positions=torch.arange(2, 8),
        token_ids=torch.arange(6), target="prob",
    )
    assert cp.select_engine(4).engine is not None
    assert cp.targets_per_backward(4) == decoder_pass.TARGETS_PER_CHUNK < cp.target_batch_size
    assert dataclasses.replace(cp, dtype=torch.float16).targets_per_backward(4) == cp.target_batch_size  # autograd
