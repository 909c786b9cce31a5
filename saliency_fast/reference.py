"""Pure-PyTorch reference of every native op: the specification each kernel must match.

Every function here is written for clarity, not speed, from plain differentiable torch ops,
so autograd (including double backward) comes for free. The native kernels in ``csrc/`` are
tested against these on random inputs in every dtype they accept.

Shape conventions: ``x`` and ``baseline`` share a shape ``S = (..., D)`` whose last dim is the
embedding dim; a leading "step" dim of size ``m`` indexes points on an attribution path.
"""

from __future__ import annotations

import torch

from saliency_fast import _checks

def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic is carried out in: float32 for half types, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce_last_dim(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce the embedding (last) dim: ``none`` keeps it, ``sum``, ``l2`` norm, ``abs_sum``."""
    if reduce == "none":
        return values
    if reduce == "sum":
        return values.sum(-1)
    if reduce == "l2":
        return torch.linalg.vector_norm(values, ord=2, dim=-1)
    if reduce == "abs_sum":
        return values.abs().sum(-1)
    raise ValueError(f"reduce must be one of {_checks.REDUCE_CHOICES}, got {reduce!r}")


def ig_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Points on the straight line from ``baseline`` to ``x``: ``out[k] = b + alphas[k] * (x - b)``.

    Returns shape ``(len(alphas), *x.shape)`` in ``x.dtype``; the arithmetic runs in the opmath
    dtype (float32 for half types) so low-precision inputs round once, at the end.
    """
    _checks.check_interpolate_args(x, baseline, alphas)
    acc = opmath_dtype(x.dtype)
    xo, bo = x.to(acc), baseline.to(acc)
    a = alphas.to(acc).reshape((-1,) + (1,) * x.dim())
    return (bo + a * (xo - bo)).to(x.dtype)


def ig_accumulate(
    grads: torch.Tensor,
    weights: torch.Tensor,
    x: torch.Tensor,
    baseline: torch.Tensor,
    reduce: str = "none",
    partial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused path-integral accumulation: ``reduce(partial + (x - b) * sum_k weights[k] * grads[k])``.

    ``grads`` has shape ``(m, *S)``, ``weights`` shape ``(m,)``. The unreduced quantity is linear
    in the steps, so a caller feeding steps chunk by chunk passes each chunk's ``reduce="none"``
    result as ``partial`` of the next call and asks for the final ``reduce`` on the last chunk.
    ``partial`` has shape ``S`` and dtype ``x.dtype`` or its opmath dtype (float32 for half
    types, so chunked accumulation need not round in between); the result has ``partial``'s
    dtype when given, else ``x.dtype``. Reductions: see :func:`reduce_last_dim`.
    """
    _checks.check_accumulate_args(grads, weights, x, baseline, reduce, partial)
    acc = opmath_dtype(x.dtype)
    out_dtype = partial.dtype if partial is not None else x.dtype
    w = weights.to(acc).reshape((-1,) + (1,) * x.dim())
    total = (grads.to(acc) * w).sum(0) * (x.to(acc) - baseline.to(acc))
    if partial is not None:
        total = total + partial.to(acc)
    return reduce_last_dim(total, reduce).to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Discretized Integrated Gradients (Sanyal & Ren, "Discretized Integrated Gradients for Explaining
# Language Models", EMNLP 2021). A DIG path runs from a word's embedding to the baseline's
# through monotonized embeddings of real vocabulary words ("anchors"). These functions are the
# spec of the native dig_* ops and, in dig_token_path, of the whole path for one token, written
# plainly after the paper and its official code (INK-USC/DIG), loop for loop.


def dig_monotonic_mask(candidates: torch.Tensor, current: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Per dim, whether ``candidates`` lies between ``current`` and ``baseline`` (inclusive; where
    the two are equal it must equal both). Broadcasts; NaN is never monotonic."""
    return ((candidates >= current) & (candidates <= baseline)) | ((candidates <= current) & (candidates >= baseline))


def _dig_step_toward_baseline(current: torch.Tensor, baseline: torch.Tensor, steps: int) -> torch.Tensor:
    # DIG's correction: 1/steps of the way from the current point toward the baseline (the
    # product is rounded before the subtraction, in the dtype of the operands)
    return current - (current - baseline) * (1.0 / steps)


def dig_monotonize(anchor: torch.Tensor, current: torch.Tensor, baseline: torch.Tensor, steps: int) -> torch.Tensor:
    """DIG's MONOTONIZE: ``anchor`` where it lies between ``current`` and ``baseline``, else
    ``current - (current - baseline) / steps``. Elementwise over equal shapes; opmath arithmetic,
    rounded once to ``anchor.dtype``."""
    _checks.check_dig_monotonize_args(anchor, current, baseline, steps)
    acc = opmath_dtype(anchor.dtype)
    a, c, b = anchor.to(acc), current.to(acc), baseline.to(acc)
    return torch.where(dig_monotonic_mask(a, c, b), a, _dig_step_toward_baseline(c, b, steps)).to(anchor.dtype)


def _dig_candidate_scores(candidates, current, baseline, steps):
    """(monotonic dim counts ``[N, K]``, squared correction norms ``[N, K]`` in float64)."""
    acc = opmath_dtype(candidates.dtype)
    a, c, b = candidates.to(acc), current.to(acc).unsqueeze(1), baseline.to(acc).unsqueeze(1)
    mask = dig_monotonic_mask(a, c, b)
    correction = torch.where(mask, 0, a - _dig_step_toward_baseline(c, b, steps))
    return mask.sum(-1), correction.double().square().sum(-1)


def dig_monotonic_scores(
    candidates: torch.Tensor, current: torch.Tensor, baseline: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score each candidate anchor ``candidates[n, k]`` (shape ``[N, K, D]``) against the point
    ``current[n]`` and ``baseline[n]`` (``[N, D]``): ``counts`` (int64 ``[N, K]``), the number of
    monotonic dims (DIG max-count), and ``correction_norm`` (float64 ``[N, K]``), the L2 norm of
    ``candidate - dig_monotonize(candidate, ...)`` (DIG greedy). The norm is float64 whatever the
    input dtype because it ranks candidates: rounding must not create ties the exact values lack."""
    _checks.check_dig_scores_args(candidates, current, baseline, steps)
    counts, squared = _dig_candidate_scores(candidates, current, baseline, steps)
    return counts, squared.sqrt()


def dig_rank_keys(counts: torch.Tensor, correction_norm: torch.Tensor, strategy: str) -> torch.Tensor:
    """Sort keys, smaller is better: the correction norm for ``greedy`` (NaN last, as +inf),
    minus the monotonic dim count for ``maxcount``."""
    _checks.dig_strategy(strategy)
    if strategy == "greedy":
        return torch.nan_to_num(correction_norm, nan=float("inf"), posinf=float("inf"))
    return -counts


def dig_pick(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the smallest key among the valid entries, ties by index (the nearer
    neighbour, as the official code's stable sort); -1 where no entry is valid."""
    masked = torch.where(valid, keys, torch.inf)
    choice = masked.argmin(-1, keepdim=True)  # the first of equal minima
    # where every valid key is +inf the argmin may land on an invalid entry: the first valid wins
    choice = torch.where(valid.gather(-1, choice), choice, valid.to(torch.int8).argmax(-1, keepdim=True))
    return torch.where(valid.any(-1), choice.squeeze(-1), -1)


def dig_select_anchor(
    candidates: torch.Tensor,
    valid: torch.Tensor,
    current: torch.Tensor,
    baseline: torch.Tensor,
    steps: int,
    strategy: str,
    anchor_word: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DIG step for N tokens at once: pick each row's best valid candidate and monotonize it.

    Candidates are scored against ``anchor_word`` (default ``current``): the official code scores
    them against the previous anchor *word's* own embedding, while the path point is monotonized
    against the previous monotonized point ``current``. ``greedy`` picks the smallest correction
    norm, ``maxcount`` the most monotonic dims (see :func:`dig_rank_keys`, :func:`dig_pick`).
    Returns ``choice`` (int64 ``[N]``, -1 where no candidate is valid) and the monotonized choice
    (``[N, D]``; the baseline itself where ``choice`` is -1).
    """
    _checks.check_dig_select_args(candidates, valid, current, baseline, steps, strategy, anchor_word)
    if candidates.shape[1] == 0:
        return torch.full(valid.shape[:1], -1, dtype=torch.long, device=valid.device), baseline.clone()
    scored_against = current if anchor_word is None else anchor_word
    counts, squared = _dig_candidate_scores(candidates, scored_against, baseline, steps)
    choice = dig_pick(dig_rank_keys(counts, squared.sqrt(), strategy), valid)
    picked = candidates.gather(1, choice.clamp_min(0).view(-1, 1, 1).expand(-1, 1, candidates.shape[-1])).squeeze(1)
    monotonized = dig_monotonize(picked, current, baseline, steps)
    return choice, torch.where(choice.unsqueeze(-1) >= 0, monotonized, baseline)


def dig_upscale(points: torch.Tensor) -> torch.Tensor:
    """DIG's ``factor`` upscaling: insert the midpoint between consecutive points (dim 0), so
    ``P`` points become ``2P - 1``."""
    acc = opmath_dtype(points.dtype)
    out = points.new_empty((2 * points.shape[0] - 1, *points.shape[1:]))
    out[0::2] = points
    out[1::2] = (0.5 * (points[:-1].to(acc) + points[1:].to(acc))).to(points.dtype)
    return out


def dig_exact_distances(embedding: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Exact squared Euclidean distances, float64 ``[M, C]``, from each query ``queries[m]`` to the
    embedding rows ``candidates[m, c]`` (differences and squares in float64)."""
    _checks.check_dig_distances_args(embedding, queries, candidates)
    return (embedding[candidates].double() - queries.double().unsqueeze(1)).square().sum(-1)


def dig_exact_neighbors(embedding: torch.Tensor, word: int, k: int) -> torch.Tensor:
    """The ``k`` nearest vocabulary words of ``word`` (itself excluded) by exact float64 Euclidean
    distance, nearest first, equal distances by index."""
    e = embedding.double()
    distances = (e - e[word]).square().sum(-1)
    order = torch.sort(distances, stable=True).indices
    return order[order != word][:k]


def dig_path_length(n_anchors: int, factor: int) -> int:
    """Points on a DIG path: the input, ``n_anchors`` anchors and the baseline, then ``factor``
    rounds of midpoint upscaling."""
    return (n_anchors + 1) * 2**factor + 1


def dig_token_path(
    word: int,
    baseline_word: int,
    embedding: torch.Tensor,
    neighbors,
    n_anchors: int,
    strategy: str,
    monotonize_steps: int,
    factor: int = 0,
    constant: bool = False,
) -> torch.Tensor:
    """The DIG path of one token, ``[dig_path_length(n_anchors, factor), D]``, baseline first.

    Plainly as published: from ``word``, ``n_anchors`` times pick the next anchor among
    ``neighbors(previous anchor)`` (the nearest first), skipping the baseline word and words
    already on the path, by the best score against the previous anchor word (ties: the nearer
    neighbour); with none left, or once the baseline is reached, the anchor is the baseline.
    Then monotonize each anchor against the previous path point, end at the baseline, reverse,
    upscale. ``constant`` (special tokens) keeps every point at the word's embedding.
    """
    _checks.dig_strategy(strategy)
    x, b = embedding[word], embedding[baseline_word]
    if constant:
        return x.expand(dig_path_length(n_anchors, factor), -1).clone()
    words = [word]
    for _ in range(n_anchors):
        previous = words[-1]
        best, best_key = baseline_word, None
        if previous != baseline_word:
            for candidate in neighbors(previous):
                candidate = int(candidate)
                if candidate == baseline_word or candidate in words:
                    continue
                counts, squared = _dig_candidate_scores(
                    embedding[candidate].view(1, 1, -1), embedding[previous].view(1, -1), b.view(1, -1),
                    monotonize_steps,
                )
                key = dig_rank_keys(counts, squared.sqrt(), strategy).item()
                if best_key is None or key < best_key:  # strict: on a tie the nearer neighbour stays
                    best, best_key = candidate, key
        words.append(best)
    points = [x]
    for anchor in words[1:]:
        points.append(dig_monotonize(embedding[anchor], points[-1], b, monotonize_steps))
    points.append(b)
    path = torch.stack(points[::-1])
    for _ in range(factor):
        path = dig_upscale(path)
    return path


def per_example_linear_grad(
    activations: torch.Tensor,
    output_grads: torch.Tensor,
    in_projection: torch.Tensor | None = None,
    out_projection: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each example's (projected) gradient of a Linear layer's weight, ``[N, k_out, k_in]``:
    ``sum_t (g_t P_out)^T (a_t P_in)`` from input activations ``a [N, T, d_in]`` and output
    gradients ``g [N, T, d_out]``; without projections it is ``sum_t g_t^T a_t``, the exact
    gradient. Computed in the accumulation dtype (float32 for half types), which it returns.
    """
    _checks.check_per_example_linear_grad_args(activations, output_grads, in_projection, out_projection)
    acc = opmath_dtype(activations.dtype)
    a, g = activations.to(acc), output_grads.to(acc)
    if in_projection is not None:
        a = a @ in_projection.to(acc)
    if out_projection is not None:
        g = g @ out_projection.to(acc)
    return torch.einsum("nto,nti->noi", g, a)
