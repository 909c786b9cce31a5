"""Layer attribution of causal-LM generation in the single causal pass of :mod:`.causal_pass`.

Causality holds inside the model as at its output: a block's output at position ``p`` depends only
on tokens ``<= p``, so each target's gradients w.r.t. the blocks' outputs over its prefix come from
the same chunked forwards (one per batch of points, every requested block hooked) and one batched
backward for all targets of a chunk, as for the input embeddings. Methods and paths are those of
:mod:`saliency_fast.hf.layers`; the results equal running each prefix alone.

A block covers the rows ``scorer.row_span(block)`` of the sequence: all of them in a decoder-only
model; an encoder block the source rows and a decoder block the target rows of an encoder-decoder
model (``[source; target]``, see :mod:`saliency_fast.hf.seq2seq`). Its scores land in those columns.
"""

from __future__ import annotations

import torch

import saliency_fast
from saliency_fast.hf.causal_pass import CausalPass, Chunk, ScoreBoard
from saliency_fast.hf.generation_options import IG_DEFAULTS, default_rows, positive_int
from saliency_fast.hf.layers import LayerRequest, single_activations
from saliency_fast.methods import integrated_gradients as ig
from saliency_fast.methods import quadrature
from saliency_fast.methods.layer import LayerSet, flatten


def attribute(request: LayerRequest, cp: CausalPass, board: ScoreBoard, baselines: torch.Tensor | None,
              kwargs: dict) -> tuple[torch.Tensor, dict]:
    """Fill ``board`` with the last requested layer's scores; return every layer's ``[T, n_layers,
    N]`` and the metadata of the method (``n_steps`` and per-target ``completeness_error`` for IG)."""
    layers = request.layer_set()
    n_tokens = cp.embeds.shape[0]
    spans = [cp.scorer.row_span(module, n_tokens) for module in layers.modules]
    acts_x = _activations(cp, layers, cp.embeds, spans)
    boards = [ScoreBoard(cp.n_targets, a, board.aggregate, _reduce) for a in acts_x]
    extra = {"n_steps": None, "completeness_error": None}
    if request.method == "integrated_gradients":
        extra = _integrated_gradients(cp, request, layers, boards, acts_x, spans, baselines, kwargs)
    else:
        _gradients(cp, layers, boards, acts_x, times_activation=request.method == "input_x_gradient")
    every = torch.full((cp.n_targets, len(boards), n_tokens), float("nan"))
    for i, (b, (start, stop)) in enumerate(zip(boards, spans)):
        every[:, i, start:stop] = b.values
    board.values[:] = every[:, -1]
    return every, extra


def _reduce(attributions: torch.Tensor, how: str, inputs: torch.Tensor) -> torch.Tensor:
    return saliency_fast.aggregate(attributions, how, inputs=inputs)


def _activations(cp: CausalPass, layers: LayerSet, embeds: torch.Tensor, spans) -> list[torch.Tensor]:
    """Each layer's output ``[rows, D]`` over the sequence ``embeds`` (``[N, D]``; a layer covers the
    rows ``spans[i]``), at full precision."""
    with torch.no_grad(), layers.tap() as tap:
        cp.scorer.scores(embeds.unsqueeze(0), cp.positions, cp.token_ids, cp.target)
    return [single_activations([values], [label], (1, stop - start))[0][0]
            for values, label, (start, stop) in zip(tap.collected(1), layers.labels, spans)]


def _recorded_gradients(cp: CausalPass, layers: LayerSet, points: torch.Tensor, chunk: Chunk):
    """Per layer, ``d score_i / d output`` at ``points`` (``[B, L, D]``): ``[T_chunk, B, L, D]``."""
    with torch.enable_grad(), layers.tap() as tap:
        scores = cp.scores(points.detach(), chunk)
    return cp.target_gradients(scores, flatten(tap.collected(points.shape[0])))


def _replaced_gradients(cp: CausalPass, layers: LayerSet, points: torch.Tensor, values: list[torch.Tensor],
                        chunk: Chunk):
    """Per layer, ``d score_i / d value`` with the layers' outputs replaced by ``values`` in a
    forward on ``points``: ``[T_chunk, *value.shape]``."""
    leaves = [(v.detach().requires_grad_(True),) for v in values]
    with torch.enable_grad(), layers.tap(leaves) as tap:
        scores = cp.scores(points, chunk)
    tap.collected(points.shape[0])
    return cp.target_gradients(scores, flatten(leaves))


def _gradients(cp: CausalPass, layers: LayerSet, boards, acts_x, times_activation: bool) -> None:
    chunks = cp.chunks(rows=1)
    with cp.progress_bar(len(chunks), "layer input_x_gradient" if times_activation else "layer saliency"):
        for chunk in chunks:
            grads = _recorded_gradients(cp, layers, cp.embeds[: chunk.length].unsqueeze(0), chunk)
            for board, grad, act in zip(boards, grads, acts_x):
                grad = grad[:, 0].float()
                board.put(chunk, grad * act[: grad.shape[1]].float() if times_activation else grad)


def _integrated_gradients(cp: CausalPass, request: LayerRequest, layers: LayerSet, boards, acts_x, spans,
                          baselines, kwargs: dict) -> dict:
    """Layer IG of every target, through the methods' chunked path integrator with the targets of a
    chunk as its examples (they share every path point, see :func:`_shared_point_gradients`)."""
    options = {**IG_DEFAULTS, **kwargs}
    n_steps = options["n_steps"]
    if isinstance(n_steps, str):
        raise ValueError("n_steps='auto' is not available for layer attribution of generation; give an int n_steps")
    alphas, weights = quadrature.nodes_and_weights(options["quadrature"], n_steps)
    steps = positive_int(options.get("internal_batch_size") or default_rows(cp, n_steps), "internal_batch_size")
    steps = max(1, min(steps, n_steps))
    acts_b = _activations(cp, layers, baselines, spans)
    change = cp.total_change(baselines)
    # path "inputs": every layer in each forward; path "layer": one layer's outputs on their line at a time
    groups = [list(range(len(acts_x)))] if request.path == "inputs" else [[i] for i in range(len(acts_x))]
    chunks = cp.chunks(rows=steps)
    totals = torch.zeros(len(acts_x), cp.n_targets, dtype=torch.float32)
    with cp.progress_bar(len(groups) * len(chunks) * -(-n_steps // steps), "layer integrated_gradients"):
        for group in groups:
            sub = LayerSet([layers.modules[i] for i in group], labels=[layers.labels[i] for i in group],
                           first_only=layers.first_only)
            for chunk in chunks:
                def per_target(t: torch.Tensor, span=(0, None)) -> torch.Tensor:  # one copy of the prefix per target
                    return t[: chunk.length - span[0]].expand(chunk.size, -1, -1).contiguous()

                ends = (tuple(per_target(acts_x[i], spans[i]) for i in group),
                        tuple(per_target(acts_b[i], spans[i]) for i in group))
                x = cp.embeds[: chunk.length]
                if request.path == "inputs":
                    gradient_fn = _shared_point_gradients(
                        lambda shared: _recorded_gradients(cp, sub, shared[0], chunk), ends[0])
                    found = ig.integrate_path(gradient_fn, (per_target(cp.embeds),), (per_target(baselines),), alphas,
                                              weights, steps, ends=ends)
                else:
                    gradient_fn = _shared_point_gradients(
                        lambda shared: _replaced_gradients(cp, sub, x.expand(shared[0].shape[0], -1, -1), shared,
                                                           chunk), ends[0])
                    found = ig.integrate_path(gradient_fn, ends[0], ends[1], alphas, weights, steps)
                for i, acc in zip(group, found):
                    totals[i, chunk.start : chunk.end] = acc.sum((1, 2)).cpu()
                    boards[i].put(chunk, acc)
    errors = (totals - change).abs().amax(0)
    return {"n_steps": n_steps, "completeness_error": [float(e) for e in errors]}


def _shared_point_gradients(layer_gradients, like: tuple[torch.Tensor, ...]) -> ig.GradientFn:
    """A gradient function whose examples are the targets of a chunk: their path points coincide, so
    only the first example's points go through ``layer_gradients`` (points per path tensor ->
    per layer ``[T_chunk, n_points, L, D]``), whose batched backward serves every target."""

    def gradients(points, n_points: int, examples):
        n_examples = points[0].shape[0] // n_points
        shared = [p.view(n_points, n_examples, *p.shape[1:])[:, 0] for p in points]
        grads = layer_gradients(shared)
        return tuple(g.transpose(0, 1).reshape(n_points * n_examples, *g.shape[2:]).to(a.dtype)
                     for g, a in zip(grads, like))

    return gradients
