"""Attribution of generation: every generated token attributed to every earlier token.

``attribute_generation(explainer, prompt, ...)`` is the engine behind
``Explainer.attribute_generation``. It takes the continuation given as ``generated_text`` (the
full text, prompt + continuation, as inseq's ``generated_texts`` for decoder-only models: forced
decoding) or generates ``max_new_tokens`` greedily, then attributes all generated tokens in the
single causal pass of :mod:`saliency_fast.hf.causal_pass`. Encoder-decoder models run on the
same pass over ``[source; target]`` (:mod:`saliency_fast.hf.seq2seq`): their ``generated_text`` is
the target text alone, as inseq's, and the result has ``source_tokens`` / ``source_scores``.

Conventions shared with inseq, so results compare one to one: the text is tokenized with the
tokenizer's special tokens (``add_special_tokens=True``) and a doubled BOS is dropped; the score
of the token at position ``t`` is read from the logits at ``t - 1``; token ``t`` is attributed to
the tokens ``0 .. t-1``. inseq's default target is ``prob`` (ours ``logit``); its saliency is
``abs`` of the gradient (ours is signed: ``l2``/``abs_sum`` are the same either way); its IG
baseline is ``unk`` at every token but EOS (ours: ``baseline`` at every token but the special
ones, which keep their embedding when ``exclude_special_tokens``).

Engine options (keyword arguments besides the method's own, see :data:`ENGINE_KWARGS`):
``dtype`` (``torch.bfloat16``: autocast, float32 accumulation), ``lm_head`` (``auto``: only the
target rows of the head for ``logit``; ``full``: the model's own head), ``max_batch_tokens``
(targets x points x prefix tokens per backward: the memory bound; default 2048 in float32, 4096
in bf16/fp16), ``target_batch_size`` (most targets per backward), ``progress``.
"""

from __future__ import annotations

import numbers

import torch

import saliency_fast
from saliency_fast.hf import baselines, causal_pass, method_registry, model_io, seq2seq, words
from saliency_fast.hf.checks import check_aggregate
from saliency_fast.hf.generation_options import positive_int
from saliency_fast.hf.layers import LayerRequest
from saliency_fast.hf.method_io import GenerationJob
from saliency_fast.hf.lm_head import HEAD_CHOICES, CausalLMScorer
from saliency_fast.hf.targets import CONTRAST_CHOICES, check_target_fn, is_contrastive
from saliency_fast.methods import lean_backward
from saliency_fast.methods._common import check_autocast_dtype

ENGINE_KWARGS = frozenset({"dtype", "lm_head", "max_batch_tokens", "target_batch_size", "progress"})
# Largest [n_generated, n_tokens, D] result aggregate="none" may build.
_MAX_UNREDUCED_BYTES = 4 * 2**30


def attribute_generation(
    explainer,
    prompt: str,
    max_new_tokens: int | None = None,
    generated_text: str | None = None,
    method: str = "saliency",
    target: str = "logit",
    aggregate: str = "l2",
    baseline="pad",
    **kwargs,
):
    """Attribute each generated token of a causal LM to every token before it.

    Args:
        explainer: an :class:`~saliency_fast.Explainer` over a causal LM or an encoder-decoder model
            (its ``model``, ``tokenizer``, ``embedding``, ``exclude_special_tokens`` and metadata are used).
        prompt: the prompt text (encoder-decoder: the source text).
        max_new_tokens: tokens to generate greedily; with ``generated_text``, attribute only the
            first ``max_new_tokens`` tokens of its continuation.
        generated_text: the full text (prompt + continuation) to force; it must tokenize to the
            prompt's tokens followed by at least one more token. Encoder-decoder: the target text alone.
        method: a method with a generation runner in :mod:`~saliency_fast.hf.method_registry`
            (``method_names("generate")``): ``saliency``, ``input_x_gradient``, ``integrated_gradients``,
            ``discretized_integrated_gradients``, ``smoothgrad``, ``vargrad``, ``occlusion``,
            ``attention``, ``attnlrp`` or ``cp_lrp`` (relevance by the AttnLRP / CP-LRP rules).
        target: the attributed score of each generated token: ``logit``, ``prob``, ``logprob``
            or ``loss`` (cross-entropy with the generated token as label); ``contrast_prob_diff`` /
            ``contrast_logit_diff``: its probability / logit minus that of the token at the same
            position of ``contrast_targets`` (a keyword argument: the full contrastive text, prompt
            + alternative continuation; encoder-decoder: the alternative target text alone), as
            inseq's contrastive step functions.
        aggregate: ``none``, ``sum``, ``l2``, ``abs_sum`` or ``dot`` over the embedding dim
            (not used by ``occlusion`` and ``attention``, which give one number per token).
        baseline: ``pad``, ``mask``, ``unk``, ``eos``, ``zero`` or a tensor ``[D]`` / ``[n_tokens, D]``
            (read by ``integrated_gradients``, ``discretized_integrated_gradients`` and ``occlusion``;
            a missing token falls back as :mod:`saliency_fast.hf.baselines` says).
        kwargs: the method's options (``n_steps`` (an int, or ``"auto"``: nested rules until the
            completeness error is within ``atol + rtol |F(x) - F(b)|``, ``min_steps`` to ``max_steps``
            points per target), ``quadrature``, ``internal_batch_size`` (path points per forward);
            ``strategy``, ``n_neighbors``, ``factor``, ``convention``, ``knn_backend`` (DIG);
            ``nt_samples``, ``nt_samples_batch_size``, ``stdevs``, ``stdevs_relative``, ``seed``;
            ``perturbations_per_eval``; ``layers``) and the engine options of the module doc.

    Returns:
        An :class:`~saliency_fast.AttributionResult` with ``tokens`` the full sequence, one row
        per generated token, NaN and mask False at and after each row's target position.
    """
    engine = {k: kwargs.pop(k) for k in ENGINE_KWARGS & kwargs.keys()}
    contrast_targets = kwargs.pop("contrast_targets", None)
    spec = _check_arguments(prompt, max_new_tokens, generated_text, method, target, aggregate, kwargs)
    _check_contrast(target, contrast_targets)
    layer_request = LayerRequest.pop(explainer.model, spec, kwargs, aggregate)  # layer=, layers=, layer_path=
    resolved = explainer.baseline_for(spec, baseline)
    options = _engine_options(engine)

    model, tokenizer = explainer.model, explainer.tokenizer
    # n_prompt: the leading tokens that are not targets (encoder-decoder: the source and the start token)
    contrast_ids = None  # aligned with ids: the competing token at each position
    if seq2seq.is_encoder_decoder(model):
        pair = seq2seq.sequence_ids(model, tokenizer, prompt, max_new_tokens, generated_text)
        ids, n_source = pair.ids, len(pair.source)
        n_prompt = n_source + 1
        if contrast_targets is not None:
            contrast_ids = pair.source + seq2seq.contrast_target_ids(model, tokenizer, contrast_targets, len(pair.target))
        embedding = seq2seq.SequenceEmbedding(model, n_source)
        scorer = seq2seq.Seq2SeqScorer(model, n_source, options["lm_head"])
    else:
        ids, n_prompt = sequence_ids(model, tokenizer, prompt, max_new_tokens, generated_text)
        n_source, embedding = 0, explainer.embedding
        scorer = CausalLMScorer(model, options["lm_head"])
    device = explainer.device
    input_ids = torch.tensor(ids, device=device)
    special = model_io.special_mask(tokenizer, input_ids)
    keep = special if explainer.exclude_special_tokens else torch.zeros_like(special)
    n_tokens, n_targets = len(ids), len(ids) - n_prompt
    _check_baseline_rows(resolved, n_tokens)
    target_ids = input_ids[n_prompt:]
    if contrast_targets is not None:
        if contrast_ids is None:
            contrast_ids = contrast_token_ids(tokenizer, contrast_targets, n_tokens)
        contrast_ids = contrast_ids[n_prompt:]  # the competing token of each target
        target_ids = torch.stack([target_ids, torch.tensor(contrast_ids, device=device)], dim=-1)
    if aggregate == "none" and not spec.per_token:
        size = n_targets * n_tokens * explainer.embedding.embedding_dim * 4
        if size > _MAX_UNREDUCED_BYTES:
            raise ValueError(
                f"aggregate='none' would return {size / 2**30:.1f} GiB ([{n_targets}, {n_tokens}, D] float32); "
                "choose an aggregation over the embedding dim (sum, l2, abs_sum, dot)"
            )

    with torch.no_grad():
        embeds = embedding(input_ids).detach()
        baseline_embeds = None
        if resolved is not None:
            baseline_embeds = baselines.baseline_embeds(
                embedding, input_ids.unsqueeze(0), resolved, keep.unsqueeze(0),
            )[0].detach()
    cp = causal_pass.CausalPass(
        scorer=scorer,
        embeds=embeds,
        positions=torch.arange(n_prompt - 1, n_tokens - 1, device=device),
        token_ids=target_ids,
        target=target,
        dtype=options["dtype"],
        max_batch_tokens=options["max_batch_tokens"],
        target_batch_size=options["target_batch_size"],
        progress=options["progress"],
        described_pass=not spec.lrp_rules,
    )
    board = causal_pass.ScoreBoard(n_targets, embeds, None if spec.per_token else aggregate, _aggregate)
    metadata_extra = {"n_steps": None, "completeness_error": None}
    rows_bound = max(1, options["max_batch_tokens"] // cp.prefix_length)  # points x targets in a backward
    with explainer.lrp_mode(spec) as rules, \
            explainer.gradient_mode(keep=tuple(layer_request.modules) if layer_request else ()), \
            lean_backward.gradient_pass_mode(options["dtype"], device, rows_bound, cp.prefix_length, batched=True):
        if layer_request is not None:
            from saliency_fast.hf import causal_layers

            layer_scores, found = causal_layers.attribute(layer_request, cp, board, baseline_embeds, kwargs)
        else:
            out = spec.runner("generate")(GenerationJob(
                cp=cp, board=board, baselines=baseline_embeds, baseline=resolved, kwargs=kwargs, embedding=embedding,
                input_ids=input_ids, keep=keep, rules=rules, name=spec.name,
            ))
            layer_scores, found = out.layer_scores, out.metadata
        metadata_extra.update(found)

    # row i scores token n_prompt + i: meaningful before that position, except kept (special) tokens
    targets_at = torch.arange(n_prompt, n_tokens).unsqueeze(1)
    mask = (torch.arange(n_tokens).unsqueeze(0) < targets_at) & ~keep.cpu().unsqueeze(0)
    scores = board.values
    scores[~mask] = float("nan")
    if layer_scores is not None:
        full = torch.full((n_targets, layer_scores.shape[1], n_tokens), float("nan"))
        full[..., : layer_scores.shape[2]] = layer_scores
        layer_scores = full.masked_fill(~mask.unsqueeze(1), float("nan"))

    tokens = model_io.token_texts(tokenizer, ids)
    special_list = special.cpu().tolist()
    source = {}
    if n_source:  # the first columns are the source side; the rest the target prefix
        source = dict(
            source_tokens=tokens[:n_source], source_scores=scores[:, :n_source], source_mask=mask[:, :n_source],
            source_token_ids=list(ids[:n_source]),
            source_word_ids=words.word_ids(None, 0, tokens[:n_source], special_list[:n_source]),
        )
        tokens, ids, special_list = tokens[n_source:], ids[n_source:], special_list[n_source:]
        scores, mask = scores[:, n_source:], mask[:, n_source:]
        if layer_scores is not None:
            source["source_layer_scores"] = layer_scores[..., :n_source]
            layer_scores = layer_scores[..., n_source:]
        n_prompt -= n_source
    metadata = explainer.base_metadata("generate", spec.name, target, None if spec.per_token else aggregate, resolved)
    metadata.update(metadata_extra)
    if layer_request is not None:
        metadata.update(layer_request.metadata())
    if contrast_ids is not None:
        metadata["contrast_targets"] = model_io.token_texts(tokenizer, contrast_ids)
    metadata.update(
        n_prompt_tokens=n_prompt,
        generated_text=tokenizer.decode(ids, skip_special_tokens=False),
        forced=generated_text is not None,
        dtype=None if options["dtype"] is None else str(options["dtype"]).replace("torch.", ""),
        lm_head=("rows" if target == "logit" else "targets") if cp.scorer.splits else "model",
        engine=cp.engine_info or {"name": "autograd", "family": None, "reason": "layer attribution runs through "
                                  "autograd" if layer_request is not None else spec.autograd_reason},
    )
    if n_source:
        metadata.update(n_source_tokens=n_source, source_text=prompt)
    return saliency_fast.AttributionResult(
        tokens=tokens,
        scores=scores,
        targets=tokens[n_prompt:],
        mask=mask,
        metadata=metadata,
        token_ids=list(ids),
        word_ids=words.word_ids(None, 0, tokens, special_list),
        target_ids=list(ids[n_prompt:]),
        layer_scores=layer_scores,
        layer_names=None if layer_scores is None else layer_request.labels if layer_request is not None else [
            f"layer {i}" for i in range(layer_scores.shape[1])],
        **source,
    )


def _check_arguments(prompt, max_new_tokens, generated_text, method, target, aggregate, kwargs):
    """The method's spec, after every check that needs no tokenizing (bad input fails fast)."""
    spec = method_registry.resolve_method(method, "generate")
    method_registry.check_method_kwargs(spec, kwargs)
    check_target_fn(target)
    check_aggregate(aggregate)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    model_io.check_texts(prompt, name="prompt")
    if generated_text is not None and not isinstance(generated_text, str):
        raise TypeError(f"generated_text must be a string (decoder-only: prompt + continuation; encoder-decoder: "
                        f"the target text), got {type(generated_text).__name__}")
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if generated_text is None and max_new_tokens is None:
        raise ValueError("give max_new_tokens (greedy generation) or generated_text (forced decoding)")
    return spec


def _check_contrast(target: str, contrast_targets) -> None:
    if is_contrastive(target) and contrast_targets is None:
        raise ValueError(f"target {target!r} needs contrast_targets: the full contrastive text (prompt + alternative "
                         "continuation; encoder-decoder: the alternative target text), aligned token by token with "
                         "the generated text")
    if contrast_targets is not None and not is_contrastive(target):
        raise ValueError(f"contrast_targets applies to the targets {CONTRAST_CHOICES}, not target={target!r}")
    if contrast_targets is not None and not isinstance(contrast_targets, str):
        raise TypeError("contrast_targets must be a string (prompt + alternative continuation; encoder-decoder: the "
                        f"alternative target text), got {type(contrast_targets).__name__}")


# ----------------------------------------------------------------------------------- tokens


def contrast_token_ids(tokenizer, contrast_text: str, n_tokens: int) -> list[int]:
    """The contrastive text's first ``n_tokens`` ids: token ``t`` competes with the sequence's token
    ``t`` (inseq's default 1:1 alignment of ``contrast_targets``)."""
    ids = encode(tokenizer, contrast_text)
    if len(ids) < n_tokens:
        raise ValueError(f"contrast_targets has {len(ids)} tokens, fewer than the {n_tokens} of prompt + generated "
                         "text: it is aligned token by token, so it needs at least as many")
    return ids[:n_tokens]



def sequence_ids(model, tokenizer, prompt: str, max_new_tokens: int | None, generated_text: str | None):
    """``(ids of prompt + continuation, number of prompt tokens)``: the forced text's tokens, or the
    prompt's followed by greedily generated ones; over-long sequences are an error naming the limit."""
    prompt_ids = encode(tokenizer, prompt)
    if generated_text is not None:
        ids = forced_ids(tokenizer, prompt_ids, generated_text, max_new_tokens)
    else:
        model_io.check_length(len(prompt_ids) + int(max_new_tokens), model, "prompt + max_new_tokens")
        ids = greedy_ids(model, tokenizer, prompt_ids, int(max_new_tokens))
    model_io.check_length(len(ids), model, "prompt + generated text")
    return ids, len(prompt_ids)



def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's special tokens, a doubled leading BOS dropped
    (a chat template's BOS plus the tokenizer's), as inseq encodes decoder-only inputs."""
    ids = [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        ids = ids[1:]
    if not ids:
        raise ValueError(f"text {text!r} has no tokens")
    return ids


def forced_ids(tokenizer, prompt_ids: list[int], generated_text: str, max_new_tokens: int | None) -> list[int]:
    """Ids of the full forced text, checked to start with the prompt's ids and add at least one."""
    ids = encode(tokenizer, generated_text)
    n = len(prompt_ids)
    if ids[:n] != prompt_ids:
        raise ValueError(
            "generated_text must be the full text (prompt + continuation) and tokenize to the prompt's tokens "
            f"first; the prompt gives {model_io.token_texts(tokenizer, prompt_ids)} but generated_text starts with "
            f"{model_io.token_texts(tokenizer, ids[:n])}"
        )
    if len(ids) == n:
        raise ValueError("generated_text adds no token to the prompt; expected prompt + at least one generated token")
    return ids if max_new_tokens is None else ids[: n + int(max_new_tokens)]


def greedy_ids(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Prompt + up to ``max_new_tokens`` greedily generated ids (stops early at EOS)."""
    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([prompt_ids], device=device)
    pad = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=pad,
        )
    return [int(i) for i in out[0].tolist()]


# --------------------------------------------------------------------------------- options


def _aggregate(attributions: torch.Tensor, how: str, inputs: torch.Tensor) -> torch.Tensor:
    return saliency_fast.aggregate(attributions, how, inputs=inputs)


def _engine_options(engine: dict) -> dict:
    options = {"dtype": None, "lm_head": "auto", "max_batch_tokens": None, "target_batch_size": 16, "progress": None}
    options.update(engine)
    options["dtype"] = check_autocast_dtype(options["dtype"])
    if options["max_batch_tokens"] is None:
        options["max_batch_tokens"] = causal_pass.default_max_batch_tokens(options["dtype"])
    if options["lm_head"] not in HEAD_CHOICES:
        raise ValueError(f"lm_head must be one of {HEAD_CHOICES}, got {options['lm_head']!r}")
    options["max_batch_tokens"] = positive_int(options["max_batch_tokens"], "max_batch_tokens")
    options["target_batch_size"] = positive_int(options["target_batch_size"], "target_batch_size")
    options["progress"] = True if options["progress"] is None else bool(options["progress"])
    return options


def _check_baseline_rows(baseline: baselines.Baseline | None, n_tokens: int) -> None:
    """A ``[n_tokens, D]`` baseline tensor must match the full sequence (prompt + generated)."""
    rows = None if baseline is None else baseline.tensor
    if rows is not None and rows.dim() == 2 and rows.shape[0] != n_tokens:
        raise ValueError(
            f"baseline tensor has {rows.shape[0]} rows but the sequence (prompt + generated) has {n_tokens} "
            f"tokens; expected [{n_tokens}, D] or one vector [D]"
        )
