"""The methods of causal-LM generation in the single causal pass (:mod:`saliency_fast.hf.causal_pass`):
one runner per method, each ``run(job: GenerationJob) -> GenerationOutput``, named by
:mod:`saliency_fast.hf.method_registry`. A runner fills ``job.board`` with each target's row and
reports its metadata (``n_steps``, ``completeness_error``, ...)."""

from __future__ import annotations

import numbers

import torch

from saliency_fast.hf import causal_pass, seq2seq
from saliency_fast.hf.checks import conservation_metadata
from saliency_fast.hf.generation_options import IG_DEFAULTS, default_rows, positive_int
from saliency_fast.hf.method_io import GenerationJob, GenerationOutput

_NOISE_DEFAULTS = {"nt_samples": 5, "stdevs": 1.0, "stdevs_relative": False, "seed": None}


def saliency(job: GenerationJob) -> GenerationOutput:
    causal_pass.saliency(job.cp, job.board)
    return GenerationOutput()


def input_x_gradient(job: GenerationJob) -> GenerationOutput:
    causal_pass.saliency(job.cp, job.board, times_input=True)
    return GenerationOutput()


def integrated_gradients(job: GenerationJob) -> GenerationOutput:
    """IG along the straight line to the baseline: a fixed rule of ``n_steps`` points, or
    ``n_steps="auto"`` (nested rules per target until the completeness error is within tolerance)."""
    from saliency_fast.methods import integrated_gradients as ig
    from saliency_fast.methods import quadrature

    cp = job.cp
    options = {**IG_DEFAULTS, **job.kwargs}
    n_steps, method = options["n_steps"], options["quadrature"]
    if isinstance(n_steps, str):
        if n_steps != "auto":
            raise ValueError(f"n_steps must be a positive int or 'auto', got {n_steps!r}")
        if method != "gausslegendre":
            raise ValueError(f"n_steps='auto' uses nested Gauss-Kronrod-Patterson rules: quadrature must be "
                             f"'gausslegendre', got {method!r}")
        for name in ("rtol", "atol"):
            ig._check_tolerance(name, options[name])
        rule = causal_pass.PathRule(levels=quadrature.nested_levels(options["min_steps"], options["max_steps"]),
                                    rtol=options["rtol"], atol=options["atol"])
        n_points = rule.levels[-1].n_nodes
    else:
        alphas, weights = quadrature.nodes_and_weights(method, n_steps)
        rule = causal_pass.PathRule(alphas.to(cp.embeds.device), weights.to(cp.embeds.device))
        n_points = n_steps
    targets = cp.target_batch_size if rule.levels is not None else cp.targets_per_backward(n_points)  # auto: autograd
    per_batch = options.get("internal_batch_size") or default_rows(cp, n_points, targets)
    found = causal_pass.integrated_gradients(cp, job.board, job.baselines, rule,
                                             positive_int(per_batch, "internal_batch_size"))
    if rule.levels is not None:
        ig._warn_unconverged(found, rule.rtol, rule.atol, options["max_steps"])
    return GenerationOutput({
        "n_steps": n_steps if rule.levels is None else found.n_steps.tolist(),
        "completeness_error": found.delta.abs().tolist(),
    })


def lrp_relevance(job: GenerationJob) -> GenerationOutput:
    """AttnLRP / CP-LRP (the rules are on the model): input x gradient in the single causal pass, every
    target in its batched backward; conservation per target in the metadata."""
    cp = job.cp
    sums = causal_pass.saliency(cp, job.board, times_input=True, desc=job.name)
    job.rules.check_attention_seen()
    with torch.no_grad():
        scores = cp.scores(cp.embeds[: cp.prefix_length].unsqueeze(0))[0]
    return GenerationOutput({"conservation": conservation_metadata(sums.tolist(), scores.tolist())})


def discretized_integrated_gradients(job: GenerationJob) -> GenerationOutput:
    """DIG: the word paths of the whole sequence (each token's own, so every prefix's too), then
    the single causal pass along them."""
    from saliency_fast import dig_paths, knn
    from saliency_fast.methods import dig

    cp, baseline, embedding = job.cp, job.baseline, job.embedding
    if baseline.token_id is None:
        raise ValueError(f"baseline must be a token (pad, mask, unk or eos) for method "
                         f"'discretized_integrated_gradients': its path ends at a word, got {baseline.requested!r}")
    options = {"n_steps": dig.DEFAULT_N_STEPS, "n_neighbors": dig.DEFAULT_N_NEIGHBORS, "strategy": "greedy",
               "factor": 0, "convention": "official", "knn_backend": None, **job.kwargs}
    n_anchors, monotonize_steps = dig_paths.step_plan(options["n_steps"], options["convention"])
    if isinstance(embedding, seq2seq.SequenceEmbedding) and not embedding.shared:
        raise ValueError("method 'discretized_integrated_gradients' needs the source and target to share one "
                         "unscaled embedding table (its paths run through that table's words); this model's differ")
    matrix = embedding.weight.detach()
    index = knn.neighbor_index(matrix, options["n_neighbors"], options["knn_backend"])
    baseline_ids = torch.full_like(job.input_ids, baseline.token_id)
    paths = dig_paths.build_paths(
        job.input_ids.unsqueeze(0), baseline_ids.unsqueeze(0), matrix, index, n_anchors=n_anchors,
        monotonize_steps=monotonize_steps, strategy=options["strategy"], factor=options["factor"],
        constant=job.keep.unsqueeze(0), show_progress=cp.progress,
    )[:, 0]
    n_points = paths.shape[0] - 1
    per_batch = options.get("internal_batch_size") or default_rows(cp, n_points, cp.targets_per_backward(n_points))
    delta = causal_pass.discretized_integrated_gradients(
        cp, job.board, paths, positive_int(per_batch, "internal_batch_size"))
    return GenerationOutput({"n_steps": n_points, "completeness_error": delta.abs().tolist()})


def _noise_tunnel(job: GenerationJob, kind: str) -> GenerationOutput:
    cp = job.cp
    options = {**_NOISE_DEFAULTS, **job.kwargs}
    n_samples = positive_int(options["nt_samples"], "nt_samples")
    stdev = options["stdevs"]
    if isinstance(stdev, bool) or not isinstance(stdev, numbers.Real) or stdev < 0:
        raise ValueError(f"stdevs must be a number >= 0, got {stdev!r}")
    if options["stdevs_relative"]:
        stdev = float(stdev) * float(cp.embeds.float().std())
    noise = sample_noise(n_samples, cp.embeds.shape, float(stdev), options["seed"])
    per_batch = options.get("nt_samples_batch_size") or default_rows(cp, n_samples, cp.targets_per_backward(n_samples))
    causal_pass.noise_tunnel(
        cp, job.board, noise.to(device=cp.embeds.device, dtype=cp.embeds.dtype),
        positive_int(per_batch, "nt_samples_batch_size"), kind,
    )
    return GenerationOutput()


def smoothgrad(job: GenerationJob) -> GenerationOutput:
    return _noise_tunnel(job, "smoothgrad")


def vargrad(job: GenerationJob) -> GenerationOutput:
    return _noise_tunnel(job, "vargrad")


def sample_noise(n_samples: int, shape, stdev: float, seed: int | None) -> torch.Tensor:
    """Gaussian noise ``[n_samples, *shape]`` (float32, CPU) for the noisy copies of the whole
    sequence; each target's prefix reads the first rows of each sample. ``seed`` makes it repeatable."""
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((n_samples, *shape), generator=generator) * stdev


def occlusion(job: GenerationJob) -> GenerationOutput:
    cp = job.cp
    ppe = job.kwargs.get("perturbations_per_eval") or max(1, cp.max_batch_tokens // cp.prefix_length)
    causal_pass.occlusion(cp, job.board, job.baselines, job.keep, positive_int(ppe, "perturbations_per_eval"))
    return GenerationOutput()


def attention(job: GenerationJob) -> GenerationOutput:
    return GenerationOutput(layer_scores=causal_pass.attention(job.cp, job.board, job.kwargs.get("layers", "last")))
