"""Encoder-decoder generation (T5, BART, Marian, mBART): the single causal pass over [source; target]
against inseq 0.7.1 and a naive loop that runs the model once per generated token."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_models import SEQ2SEQ_FAMILIES, tiny_seq2seq

from saliency_fast import Explainer, cli, load
from saliency_fast.hf import generation_methods, seq2seq
from saliency_fast.hf import targets as target_fns
from saliency_fast.methods import quadrature

SOURCE = "the movie was good"
TARGET = "le film est bon"


@pytest.fixture(scope="module", params=SEQ2SEQ_FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def pair(family):
    return tiny_seq2seq(family)


def attribute(model, tok, method, exclude_special_tokens=False, **kwargs):
    explainer = Explainer(model, tok, exclude_special_tokens=exclude_special_tokens)
    kwargs.setdefault("generated_text", TARGET)
    return explainer.attribute_generation(SOURCE, method=method, progress=False, **kwargs)


def joined(result) -> torch.Tensor:
    """``[n_generated, n_source + n_target(, D)]``: both sides, as the naive loop lays them out."""
    return torch.cat([result.source_scores, result.scores], dim=1)


# --------------------------------------------------------------------------------- naive loop


class Naive:
    """Each generated token scored on its own: the encoder on the source, the decoder on the target
    prefix before it, the model's full logits at the prefix's last position (inseq's per-step loop)."""

    def __init__(self, model, result, target: str):
        self.model, self.target = model, target
        self.n_source = len(result.source_tokens)
        ids = torch.tensor(result.source_token_ids + result.token_ids)
        self.embeds = seq2seq.SequenceEmbedding(model, self.n_source)(ids).detach()
        self.ids = ids

    def score(self, points: torch.Tensor, j: int) -> torch.Tensor:
        """Score of target token ``j`` (1-based in the target) from ``points`` ``[B, S + j, D]``."""
        s = self.n_source
        logits = self.model(inputs_embeds=points[:, :s], decoder_inputs_embeds=points[:, s:], use_cache=False).logits
        token = self.ids[s + j].expand(points.shape[0])
        return target_fns.score_from_logits(logits[:, -1], token, self.target)

    def gradient(self, points: torch.Tensor, j: int) -> torch.Tensor:
        points = points.detach().requires_grad_(True)
        return torch.autograd.grad(self.score(points, j).sum(), points)[0]

    def rows(self, per_target) -> torch.Tensor:
        """``per_target(j, prefix)`` for every target token, NaN-padded to ``[T, N(, D)]``."""
        n = self.embeds.shape[0]
        out = []
        for j in range(1, n - self.n_source):
            value = per_target(j, self.embeds[: self.n_source + j])
            row = torch.full((n, *value.shape[1:]), float("nan"))
            row[: value.shape[0]] = value
            out.append(row)
        return torch.stack(out)


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol=1e-4, atol=1e-6):
    seen = ~torch.isnan(expected)
    assert torch.equal(seen, ~torch.isnan(got))
    torch.testing.assert_close(got[seen], expected[seen].float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("target", ["logit", "prob"])
def test_gradient_methods_equal_the_naive_loop(pair, target):
    model, tok = pair
    result = attribute(model, tok, "saliency", target=target, aggregate="none")
    naive = Naive(model, result, target)
    expected = naive.rows(lambda j, x: naive.gradient(x[None], j)[0])
    assert_close(joined(result), expected)
    times_input = attribute(model, tok, "input_x_gradient", target=target, aggregate="none")
    assert_close(joined(times_input), naive.rows(lambda j, x: naive.gradient(x[None], j)[0] * x))


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_equal_the_naive_loop(pair, rule):
    model, tok = pair
    result = attribute(model, tok, "integrated_gradients", aggregate="none", baseline="zero", n_steps=6,
                       quadrature=rule, target="logprob")
    naive = Naive(model, result, "logprob")
    alphas, weights = quadrature.nodes_and_weights(rule, 6)

    def integrated(j, x):
        path = alphas.view(-1, 1, 1).float() * x  # the zero baseline
        return (weights.view(-1, 1, 1).float() * naive.gradient(path, j)).sum(0) * x

    assert_close(joined(result), naive.rows(integrated), rtol=1e-4, atol=1e-6)
    assert len(result.metadata["completeness_error"]) == len(result.targets)


def test_noise_tunnel_and_occlusion_equal_the_naive_loop(pair):
    model, tok = pair
    noise_args = dict(nt_samples=3, stdevs=0.1, seed=7, aggregate="none")
    smooth = attribute(model, tok, "smoothgrad", **noise_args)
    var = attribute(model, tok, "vargrad", **noise_args)
    naive = Naive(model, smooth, "logit")
    noise = generation_methods.sample_noise(3, naive.embeds.shape, 0.1, 7)

    def grads(j, x):
        return naive.gradient(x + noise[:, : x.shape[0]], j)

    assert_close(joined(smooth), naive.rows(lambda j, x: grads(j, x).mean(0)))
    assert_close(joined(var), naive.rows(lambda j, x: grads(j, x).var(0, unbiased=False)), atol=1e-7)

    occluded = attribute(model, tok, "occlusion", baseline="zero", target="prob")
    naive = Naive(model, occluded, "prob")

    def leave_one_out(j, x):
        copies = x.repeat(x.shape[0], 1, 1)
        copies[torch.arange(x.shape[0]), torch.arange(x.shape[0])] = 0.0
        with torch.no_grad():
            return naive.score(x[None], j) - naive.score(copies, j)

    assert_close(joined(occluded), naive.rows(leave_one_out), atol=1e-6)


def test_chunked_targets_equal_one_backward_and_auto_steps_converge(pair):
    model, tok = pair
    whole = attribute(model, tok, "integrated_gradients", n_steps=4, aggregate="sum")
    chunked = attribute(model, tok, "integrated_gradients", n_steps=4, aggregate="sum", target_batch_size=1,
                        max_batch_tokens=16)
    assert_close(joined(chunked), joined(whole), rtol=1e-5)
    # n_steps="auto" stops each target once |F(x) - F(b) - sum| <= rtol |F(x) - F(b)|
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every target converges
        auto = attribute(model, tok, "integrated_gradients", n_steps="auto", rtol=0.05, aggregate="sum")
    errors, sums = torch.tensor(auto.metadata["completeness_error"]), joined(auto).nansum(1)
    assert (errors <= 0.05 * (sums.abs() + errors)).all() and max(auto.metadata["n_steps"]) < 127


def test_attention_rows_cover_the_source_and_the_prefix(pair):
    model, tok = pair
    result = attribute(model, tok, "attention")
    # the last layer's cross-attention over the source, and self-attention over the prefix, each sum to 1
    torch.testing.assert_close(result.source_scores.sum(1), torch.ones(len(result.targets)))
    torch.testing.assert_close(result.scores.nansum(1), torch.ones(len(result.targets)))


def test_greedy_generation_and_views(pair, tmp_path):
    model, tok = pair
    result = Explainer(model, tok).attribute_generation(SOURCE, max_new_tokens=3, progress=False)
    with torch.no_grad():
        expected = model.generate(input_ids=torch.tensor([tok(SOURCE)["input_ids"]]), max_new_tokens=3,
                                  do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)[0].tolist()
    assert result.token_ids == expected and len(result.targets) == len(expected) - 1
    assert result.source_token_ids == tok(SOURCE)["input_ids"] and result.metadata["n_source_tokens"] == len(
        result.source_token_ids)
    assert result.source_scores.shape == (len(result.targets), len(result.source_tokens))
    loaded = load(result.save(tmp_path / "r.json"))
    torch.testing.assert_close(loaded.source_scores, result.source_scores, equal_nan=True)
    assert "generated \\ source" in result.to_html() and len(result.plot().axes) == 3  # two maps + colour bar


# ------------------------------------------------------------------------------- against inseq


def inseq_baseline(result, tok) -> torch.Tensor:
    """inseq's IG baseline: unk everywhere but EOS and the target's start token (see its encode())."""
    ids = torch.tensor(result.source_token_ids + result.token_ids)
    baseline = torch.where(ids == tok.eos_token_id, ids, torch.full_like(ids, tok.unk_token_id))
    n_source = len(result.source_token_ids)
    baseline[n_source] = ids[n_source]
    return baseline


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_matches_inseq(family, method):
    inseq = pytest.importorskip("inseq")
    model, tok = tiny_seq2seq(family)
    peer_model, peer_tok = tiny_seq2seq(family)  # inseq configures the model and tokenizer it is given
    options = {"n_steps": 6} if method == "integrated_gradients" else {}
    out = inseq.load_model(peer_model, method, tokenizer=peer_tok).attribute(
        SOURCE, TARGET, attribute_target=True, show_progress=False, **options)
    seq = out.sequence_attributions[0]
    expected = torch.cat([seq.source_attributions, seq.target_attributions], 0).permute(1, 0, 2).float()

    kwargs = {"target": "prob", "aggregate": "none", **options}
    if method == "integrated_gradients":
        first = attribute(model, tok, "saliency")
        embedding = seq2seq.SequenceEmbedding(model, len(first.source_tokens))
        kwargs["baseline"] = embedding(inseq_baseline(first, tok)).detach()
    result = attribute(model, tok, method, **kwargs)
    assert [t.token for t in seq.source] == result.source_tokens and [t.token for t in seq.target] == result.tokens
    ours = joined(result)
    assert_close(ours.abs() if method == "saliency" else ours, expected, rtol=1e-4, atol=1e-7)


def test_marian_with_scaled_embeddings_feeds_what_token_ids_feed():
    model, tok = tiny_seq2seq("marian", scale_embedding=True)
    embedding = seq2seq.SequenceEmbedding(model, 3)
    assert embedding.scales == (model.get_encoder().embed_scale, 1.0)  # the decoder scales embeddings itself
    ids = torch.tensor([[5, 6, tok.eos_token_id, model.config.decoder_start_token_id, 9, 10]])
    embeds = embedding(ids)
    with torch.no_grad():
        expected = model(input_ids=ids[:, :3], decoder_input_ids=ids[:, 3:]).logits
        got = model(inputs_embeds=embeds[:, :3], decoder_inputs_embeds=embeds[:, 3:]).logits
    torch.testing.assert_close(got, expected)
    assert not embedding.shared


# --------------------------------------------------------------------------- tasks and bad input


def test_task_auto_and_from_pretrained_pick_generation(tmp_path, family):
    model, tok = tiny_seq2seq(family)
    assert Explainer(model, tok).task == "generate"
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = Explainer.from_pretrained(tmp_path / "m")
    assert loaded.task == "generate" and loaded.model.config.is_encoder_decoder
    with pytest.raises(ValueError, match="use attribute_generation"):
        loaded.attribute("the movie")


def test_bad_targets_name_the_argument():
    model, tok = tiny_seq2seq("bart")
    explainer = Explainer(model, tok)
    with pytest.raises(ValueError, match="target text alone"):
        explainer.attribute_generation(SOURCE, generated_text=SOURCE + " le film")
    with pytest.raises(ValueError, match="generated_text is empty"):
        explainer.attribute_generation(SOURCE, generated_text="  ")
    with pytest.raises(ValueError, match=r"generated_text \(the target\) is \d+ tokens long but the model accepts at most 64"):
        explainer.attribute_generation(SOURCE, generated_text=" ".join(["film"] * 80))
    with pytest.raises(ValueError, match="share one unscaled embedding table"):
        Explainer(*tiny_seq2seq("bart", scale_embedding=True)).attribute_generation(
            SOURCE, generated_text=TARGET, method="discretized_integrated_gradients", baseline="unk")


def test_discretized_integrated_gradients_equal_the_naive_loop_on_a_shared_table():
    from saliency_fast import dig_paths, knn

    model, tok = tiny_seq2seq("t5")
    result = attribute(model, tok, "discretized_integrated_gradients", baseline="unk", n_steps=8, n_neighbors=10,
                       aggregate="none", target="logprob")
    naive = Naive(model, result, "logprob")
    # the same word paths (every token walks its own, independent of the others)
    matrix = model.get_input_embeddings().weight.detach()
    n_anchors, monotonize_steps = dig_paths.step_plan(8, "official")
    paths = dig_paths.build_paths(
        naive.ids[None], torch.full_like(naive.ids, tok.unk_token_id)[None], matrix,
        knn.neighbor_index(matrix, 10, None), n_anchors=n_anchors, monotonize_steps=monotonize_steps,
        strategy="greedy", factor=0, constant=torch.zeros_like(naive.ids, dtype=torch.bool)[None])[:, 0]

    def discretized(j, x):
        prefix = paths[:, : x.shape[0]]
        return (naive.gradient(prefix[:-1], j) * (prefix[1:] - prefix[:-1])).sum(0)

    assert_close(joined(result), naive.rows(discretized), rtol=1e-4, atol=1e-6)
    assert len(result.metadata["completeness_error"]) == len(result.targets)


def test_attention_equals_the_naive_loop(family):
    model, tok = tiny_seq2seq(family)
    result = attribute(model, tok, "attention")
    naive = Naive(model, result, "logit")
    s = naive.n_source
    model.set_attn_implementation("eager")  # the kernel that returns attention weights

    def last_layer(j, x):
        with torch.no_grad():
            out = model(inputs_embeds=x[None, :s], decoder_inputs_embeds=x[None, s:], output_attentions=True)
        cross, own = out.cross_attentions[-1][0].mean(0)[-1], out.decoder_attentions[-1][0].mean(0)[-1]
        return torch.cat([cross, own])

    assert_close(joined(result), naive.rows(last_layer), rtol=1e-5, atol=1e-6)


def test_cli_explain_and_batch_on_a_saved_seq2seq_model(tmp_path, capsys):
    model, tok = tiny_seq2seq("t5")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    assert cli.main(["explain", SOURCE, "--model", str(tmp_path / "m"), "--generated-text", TARGET,
                     "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "attribution.json").read_text())
    assert saved["source_tokens"] == ["the", "movie", "was", "good", "</s>"] and saved["targets"][-1] == "</s>"

    rows = [{"id": 1, "text": SOURCE, "target": TARGET}, {"id": 2, "text": "a film", "target": ""}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli.main(["batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "b"), "--model",
                     str(tmp_path / "m"), "--generated-column", "target", "--device", "cpu", "--no-progress"]) == 0
    from saliency_fast.jobs import read_results

    table = read_results(tmp_path / "b")
    assert table.column("error").to_pylist() == [None, "response is empty"]
    assert table.column("target").to_pylist()[0] == ["le", "film", "est", "bon", "</s>"]


def test_bf16_stays_close_to_float32():
    model, tok = tiny_seq2seq("bart")
    full = attribute(model, tok, "integrated_gradients", n_steps=8, aggregate="sum")
    half = attribute(model, tok, "integrated_gradients", n_steps=8, aggregate="sum", dtype=torch.bfloat16)
    assert half.metadata["dtype"] == "bfloat16"
    scale = float(joined(full).abs().nan_to_num().max())
    assert_close(joined(half), joined(full), rtol=0.05, atol=0.05 * scale)


# --------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_layer_saliency_of_encoder_and_decoder_blocks_equals_the_naive_loop(family):
    model, tok = tiny_seq2seq(family)
    result = attribute(model, tok, "saliency", layers="all", aggregate="sum", target="logprob")
    encoder, decoder = model.get_encoder(), model.get_decoder()
    names = [name for name, _ in seq2seq_blocks(model)]
    assert result.layer_names == names and len(names) == 4
    naive = Naive(model, result, "logprob")
    n_source = naive.n_source
    for k, (name, block) in enumerate(seq2seq_blocks(model)):
        on_source = any(block is m for m in encoder.modules())
        assert on_source != any(block is m for m in decoder.modules())

        def per_target(j, x, block=block):
            kept = []
            handle = block.register_forward_hook(lambda _m, _i, out: kept.append(out[0] if isinstance(out, tuple) else out))
            try:
                score = naive.score(x[None].detach(), j)
            finally:
                handle.remove()
            (grad,) = torch.autograd.grad(score.sum(), kept)
            return grad[0].sum(-1).detach()

        expected = naive.rows(lambda j, x: per_target(j, x))  # [T, rows of the block's side]
        got = (result.source_layer_scores if on_source else result.layer_scores)[:, k]
        width = n_source if on_source else got.shape[1]
        assert_close(got, expected[:, :width], rtol=1e-4, atol=1e-6)
        other = result.layer_scores[:, k] if on_source else result.source_layer_scores[:, k]
        assert torch.isnan(other).all()  # an encoder block never scores the target side, and vice versa


def test_layer_integrated_gradients_of_all_blocks_equal_one_at_a_time():
    model, tok = tiny_seq2seq("t5")
    every = attribute(model, tok, "integrated_gradients", layers="all", n_steps=4, aggregate="sum")
    assert len(every.metadata["completeness_error"]) == len(every.targets)
    for k in (0, 3):  # an encoder block and a decoder block
        one = attribute(model, tok, "integrated_gradients", layer=k, n_steps=4, aggregate="sum")
        side = "source_layer_scores" if k < 2 else "layer_scores"
        assert_close(getattr(one, side)[:, 0], getattr(every, side)[:, k], rtol=1e-5, atol=1e-7)


def seq2seq_blocks(model):
    from saliency_fast.hf.layers import transformer_blocks

    return transformer_blocks(model)


@pytest.mark.parametrize("target", ["logit", "prob"])
def test_split_head_equals_the_models_own_head(family, target):
    model, tok = tiny_seq2seq(family)
    split = attribute(model, tok, "saliency", target=target, aggregate="none")
    full = attribute(model, tok, "saliency", target=target, aggregate="none", lm_head="full")
    assert split.metadata["lm_head"] == ("rows" if target == "logit" else "targets")
    assert full.metadata["lm_head"] == "model"
    assert_close(joined(split), joined(full), rtol=1e-5, atol=1e-7)


def test_tied_t5_head_is_found_by_its_scale():
    model, _ = tiny_seq2seq("t5", tie_word_embeddings=True)  # T5 scales the tied head's input by d_model ** -0.5
    head = seq2seq.Seq2SeqScorer(model, 3)._head
    assert head is not None and head.scale == model.config.d_model ** -0.5 and not head.final_bias
    bart, tok = tiny_seq2seq("bart")
    bart.final_logits_bias.normal_()  # zero at init: make it count
    assert seq2seq.Seq2SeqScorer(bart, 3)._head.final_bias
    split = attribute(bart, tok, "saliency", target="logit", aggregate="sum")
    full = attribute(bart, tok, "saliency", target="logit", aggregate="sum", lm_head="full")
    assert_close(joined(split), joined(full), rtol=1e-5, atol=1e-7)
