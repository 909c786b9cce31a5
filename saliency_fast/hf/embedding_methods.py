"""The gradient, path, noise, perturbation, LRP and attention methods over word embeddings: one
runner per method, each ``run(job: EmbeddingJob) -> MethodOutput`` (attributions ``[B, S, D]``),
named by :mod:`saliency_fast.hf.method_registry`. LIME, KernelSHAP, GradientSHAP, DeepLIFT and
Grad-CAM are in :mod:`saliency_fast.hf.token_level_methods`."""

from __future__ import annotations

import torch

import saliency_fast
from saliency_fast.hf.method_io import EmbeddingJob, MethodOutput


def saliency(job: EmbeddingJob) -> MethodOutput:
    attr = saliency_fast.Saliency(job.forward, dtype=job.dtype).attribute(
        job.inputs, additional_forward_args=job.args, abs=False)
    return MethodOutput(attr)


def input_x_gradient(job: EmbeddingJob) -> MethodOutput:
    attr = saliency_fast.InputXGradient(job.forward, dtype=job.dtype).attribute(
        job.inputs, additional_forward_args=job.args)
    return MethodOutput(attr)


def lrp_relevance(job: EmbeddingJob) -> MethodOutput:
    """AttnLRP / CP-LRP: input x gradient under the rules the caller put on the model
    (:func:`saliency_fast.methods.lrp.lrp_rules`), with the scores relevance conserves."""
    from saliency_fast.methods import _common, lrp

    (relevance,), scores = lrp.relevance_and_scores(
        job.forward, (job.inputs,), _common.Target.parse(None, len(job.inputs)), job.args, job.dtype)
    return MethodOutput(relevance, scores=scores)


def _noise_options(kwargs: dict) -> dict:
    """SmoothGrad/VarGrad options with their defaults: 5 samples; noise of 10 % of each example's
    spread when neither ``stdevs`` nor ``stdevs_relative`` is given (captum's default, an absolute
    1.0, is about 20x the spread of typical word embeddings and drowns the signal); ``seed``
    (an int, or None for the global RNG) makes the noise repeatable."""
    options = {"nt_samples": 5, "seed": None, **kwargs}
    if "stdevs" not in kwargs and "stdevs_relative" not in kwargs:
        options.update(stdevs=0.1, stdevs_relative=True)
    return options


def _noise_tunnel(job: EmbeddingJob, nt_type: str) -> MethodOutput:
    kwargs = _noise_options(job.kwargs)
    kwargs["generator"] = kwargs.pop("seed")
    tunnel = saliency_fast.NoiseTunnel(saliency_fast.Saliency(job.forward, dtype=job.dtype))
    attr = tunnel.attribute(job.inputs, nt_type=nt_type, additional_forward_args=job.args, abs=False, **kwargs)
    return MethodOutput(attr)


def smoothgrad(job: EmbeddingJob) -> MethodOutput:
    return _noise_tunnel(job, "smoothgrad")


def vargrad(job: EmbeddingJob) -> MethodOutput:
    return _noise_tunnel(job, "vargrad")


def occlusion(job: EmbeddingJob) -> MethodOutput:
    """Leave-one-token-out: each token in turn set to its baseline."""
    width = job.inputs.shape[-1]
    attr = saliency_fast.Occlusion(job.forward, dtype=job.dtype).attribute(
        job.inputs, sliding_window_shapes=(1, width), strides=(1, width), baselines=job.baselines,
        additional_forward_args=job.args,
        perturbations_per_eval=job.kwargs.get(
            "perturbations_per_eval", max(1, (job.internal_batch_size or 1) // len(job.inputs))),
    )
    return MethodOutput(attr)


def _path_kwargs(job: EmbeddingJob) -> dict:
    return {"internal_batch_size": job.internal_batch_size, **job.kwargs}


def integrated_gradients(job: EmbeddingJob) -> MethodOutput:
    kwargs = _path_kwargs(job)
    ig = saliency_fast.IntegratedGradients(job.forward, dtype=job.dtype)
    quadrature = kwargs.pop("quadrature", "gausslegendre")
    attr, delta = ig.attribute(
        job.inputs, baselines=job.baselines, additional_forward_args=job.args, method=quadrature,
        return_convergence_delta=True, **kwargs,
    )
    return MethodOutput(attr, delta.detach().abs(), ig.last_n_steps)


def sequential_integrated_gradients(job: EmbeddingJob) -> MethodOutput:
    """Sequential IG (Enguehard, 2023) over the attributed tokens (not ``keep``, which get no path
    copy); a row's completeness error is the largest of its tokens' (each path has its own endpoints)."""
    kwargs = _path_kwargs(job)
    sig = saliency_fast.SequentialIntegratedGradients(job.forward, dtype=job.dtype)
    n_steps = kwargs.get("n_steps", 50)
    attr, delta = sig.attribute(
        job.inputs, baselines=job.baselines, additional_forward_args=job.args, n_steps=n_steps,
        method=kwargs.get("quadrature", "gausslegendre"), internal_batch_size=kwargs["internal_batch_size"],
        return_convergence_delta=True, token_mask=~job.keep,
    )
    steps = torch.full((job.inputs.shape[0],), n_steps, dtype=torch.long, device=job.inputs.device)
    return MethodOutput(attr, delta.abs().amax(1).float(), steps)


def discretized_integrated_gradients(job: EmbeddingJob) -> MethodOutput:
    """DIG along word paths of the embedding table; ``n_steps`` counts gradient evaluations per row."""
    from saliency_fast.methods import dig

    if job.baseline_token_id is None:
        raise ValueError("baseline must be a token (pad, mask, unk or eos) for method "
                         "'discretized_integrated_gradients': its path ends at a word")
    found = dig.dig_attribute_embeddings(
        job.forward, job.input_ids, job.embedding_matrix(), job.baseline_token_id, additional_forward_args=job.args,
        special_token_ids=job.special_token_ids, return_convergence_delta=True, dtype=job.dtype,
        **_path_kwargs(job),
    )
    steps = torch.full((len(job.inputs),), found.n_points - 1, dtype=torch.long)  # no gradient at the input
    return MethodOutput(found.attributions, found.convergence_delta.detach().abs(), steps)


def attention(job: EmbeddingJob) -> MethodOutput:
    """Attention paid by each row's scored position(s), heads averaged: the last layer
    (``layers="last"``) or the mean over layers (``"mean"``); every layer's row beside."""
    per_layer = job.attention()  # [B, n_layers, S]
    chosen = per_layer[:, -1] if job.kwargs.get("layers", "last") == "last" else per_layer.mean(1)
    return MethodOutput(chosen.unsqueeze(-1), layer_scores=per_layer)
