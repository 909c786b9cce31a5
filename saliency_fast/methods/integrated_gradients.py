"""Integrated Gradients (Sundararajan et al., 2017) with a fixed rule or adaptive ``n_steps="auto"``.

The building blocks are public so other path methods (layer IG, DIG, sequential IG) reuse them:

- :func:`integrate_path` runs the chunked loop of a fixed rule: it interpolates a chunk of path
  points with ``ops.ig_interpolate``, asks a *gradient function* for the gradients there and adds
  them into float32 (float64 for float64 inputs) buffers with ``ops.ig_accumulate_``, so memory
  does not grow with the number of steps and no chunk keeps an autograd graph alive.
- :func:`integrate_path_adaptive` integrates over the nested Gauss-Kronrod-Patterson levels of
  :func:`quadrature.nested_levels`, reusing every gradient evaluated so far, and stops per example
  once the completeness error is small enough.
- A gradient function is ``fn(points, n_points, examples) -> gradients``: ``points`` is a tuple of
  tensors with ``n_points * len(examples)`` rows (point-major: rows ``[k * n, (k + 1) * n)`` are
  point ``k`` of every example), ``examples`` the indices of those examples among the caller's
  (``None``: all of them, in order). :func:`gradient_function` builds one from a forward function.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from saliency_fast import ops, reference
from saliency_fast.methods import _common, quadrature
from saliency_fast.methods.gradient import GradientAttribution

GradientFn = Callable[[_common.Tensors, int, "torch.Tensor | None"], _common.Tensors]


def gradient_function(
    forward_func, target: _common.Target, args: tuple | None, dtype: torch.dtype | None = None
) -> GradientFn:
    """A gradient function for :func:`integrate_path`: gradients of the targeted output w.r.t. the
    points, with the target and per-example additional args matched to the points' examples."""

    def gradients(points: _common.Tensors, n_points: int, examples: torch.Tensor | None) -> _common.Tensors:
        chunk_target = target if examples is None else target.subset(examples)
        chunk_args = args if examples is None else _common.select_args(args, examples)
        return _common.input_gradients(forward_func, points, chunk_target, _common.repeat_args(chunk_args, n_points), dtype)

    return gradients


def steps_per_chunk(internal_batch_size: int | None, n_examples: int) -> int | None:
    """Path points per chunk so a chunk has at most ``internal_batch_size`` rows (at least one point
    per chunk, as captum does); None: every point in one chunk."""
    if internal_batch_size is None:
        return None
    if internal_batch_size < n_examples:
        warnings.warn(
            f"internal_batch_size ({internal_batch_size}) is smaller than the number of examples "
            f"({n_examples}); using one path point ({n_examples} rows) per chunk",
            stacklevel=3,
        )
    return max(1, internal_batch_size // n_examples)


def new_accumulators(inputs: _common.Tensors) -> _common.Tensors:
    return tuple(torch.zeros(x.shape, dtype=reference.opmath_dtype(x.dtype), device=x.device) for x in inputs)


def _path_ends(inputs: _common.Tensors, baselines: _common.Tensors, multiply_by_inputs: bool):
    """The ``(x, baseline)`` pairs the accumulation multiplies by: the real ones, or 1 and 0 so that
    ``x - baseline == 1`` exactly and the buffers hold the weighted gradient sum alone."""
    if multiply_by_inputs:
        return inputs, baselines
    one = [torch.ones((), dtype=x.dtype, device=x.device).expand_as(x) for x in inputs]
    return one, [torch.zeros_like(o) for o in one]


def accumulate_path(
    gradient_fn: GradientFn,
    inputs: _common.Tensors,
    baselines: _common.Tensors,
    alphas: torch.Tensor,
    weight_rows: Sequence[torch.Tensor],
    accumulators: Sequence[_common.Tensors],
    chunk_steps: int | None,
    *,
    multiply_by_inputs: bool = True,
    examples: torch.Tensor | None = None,
    progress=None,
    ends: tuple[_common.Tensors, _common.Tensors] | None = None,
) -> None:
    """Add ``(x - b) * sum_k w[k] * grad(b + alphas[k] (x - b))`` into every ``accumulators[r]`` with
    its own weights ``weight_rows[r]`` (one gradient evaluation serves several rules), in chunks of
    ``chunk_steps`` points.

    ``ends``: the ``(values, baselines)`` the gradients are taken w.r.t. and multiplied by, when they
    are not the interpolated tensors themselves (layer IG along the input path: the inputs move, the
    gradients are w.r.t. a layer's activations); default ``(inputs, baselines)``."""
    n_examples = inputs[0].shape[0]
    n_points = alphas.shape[0]
    chunk_steps = n_points if chunk_steps is None else chunk_steps
    ends = _path_ends(*(ends or (inputs, baselines)), multiply_by_inputs)
    device = inputs[0].device
    alphas = alphas.to(device)
    weight_rows = [w.to(device) for w in weight_rows]
    for start in range(0, n_points, chunk_steps):
        chunk = slice(start, min(start + chunk_steps, n_points))
        m = chunk.stop - chunk.start
        with torch.no_grad():
            points = tuple(
                ops.ig_interpolate(x, b, alphas[chunk]).reshape(m * n_examples, *x.shape[1:])
                for x, b in zip(inputs, baselines)
            )
        grads = gradient_fn(points, m, examples)
        del points
        with torch.no_grad():
            for weights, buffers in zip(weight_rows, accumulators):
                for buffer, grad, x, b in zip(buffers, grads, *ends):
                    ops.ig_accumulate_(buffer, grad.reshape(m, *x.shape), weights[chunk], x, b)
        if progress is not None:
            progress.update(m * n_examples)


def integrate_path(
    gradient_fn: GradientFn,
    inputs: _common.Tensors,
    baselines: _common.Tensors,
    alphas: torch.Tensor,
    weights: torch.Tensor,
    chunk_steps: int | None = None,
    *,
    multiply_by_inputs: bool = True,
    progress=None,
    ends: tuple[_common.Tensors, _common.Tensors] | None = None,
) -> _common.Tensors:
    """The path integral of a fixed rule ``(alphas, weights)`` (see :mod:`quadrature`) from each
    baseline to its input, in float32 buffers (float64 for float64 inputs), shaped like the inputs
    (like ``ends[0]`` when ``ends`` is given, see :func:`accumulate_path`).

    ``multiply_by_inputs=False`` leaves out the ``(x - b)`` factor (the weighted mean gradient).
    """
    accumulators = new_accumulators(inputs if ends is None else ends[0])
    accumulate_path(
        gradient_fn, inputs, baselines, alphas, [weights], [accumulators], chunk_steps,
        multiply_by_inputs=multiply_by_inputs, progress=progress, ends=ends,
    )
    return accumulators


def completeness_sums(
    attributions: _common.Tensors, inputs: _common.Tensors, baselines: _common.Tensors, multiply_by_inputs: bool = True
) -> torch.Tensor:
    """Per example, the sum of all attributions over every input tensor (times ``x - b`` first when
    the attributions are not multiplied by it): the quantity completeness says equals F(x) - F(b)."""
    if not multiply_by_inputs:
        attributions = tuple(a * (x - b).to(a.dtype) for a, x, b in zip(attributions, inputs, baselines))
    return torch.stack([a.reshape(a.shape[0], -1).sum(1) for a in attributions]).sum(0)


@dataclasses.dataclass
class AdaptiveResult:
    """What :func:`integrate_path_adaptive` returns: attributions (float32 / float64 buffers), the
    number of path points used per example, and the signed completeness error per example."""

    attributions: _common.Tensors
    n_steps: torch.Tensor
    delta: torch.Tensor
    converged: torch.Tensor


def integrate_path_adaptive(
    gradient_fn: GradientFn,
    inputs: _common.Tensors,
    baselines: _common.Tensors,
    total_change: torch.Tensor,
    levels: Sequence[quadrature.NestedLevel],
    *,
    rtol: float = 0.01,
    atol: float = 0.0,
    internal_batch_size: int | None = None,
    multiply_by_inputs: bool = True,
    progress=None,
) -> AdaptiveResult:
    """Integrate level after level of a nested rule, stopping per example once
    ``|sum(attributions) - total_change| <= atol + rtol * |total_change|`` (or at the last level).

    ``total_change`` is F(x) - F(baseline) per example. Every gradient is evaluated once: the
    gradients of the nodes a level adds are accumulated straight away into one buffer per remaining
    level, with that level's weights (the weights of old nodes change from level to level), so
    memory is ``len(levels)`` input-sized buffers, not one per node. Finished examples leave the
    batch (their target and per-example additional args follow them): examples must not interact
    in the forward pass (no batch statistics), as with any batched attribution.
    """
    n_examples = inputs[0].shape[0]
    device = inputs[0].device
    result = new_accumulators(inputs)
    n_steps = torch.zeros(n_examples, dtype=torch.long, device=device)
    delta = torch.zeros(n_examples, dtype=result[0].dtype, device=device)
    converged = torch.zeros(n_examples, dtype=torch.bool, device=device)
    active = torch.arange(n_examples, device=device)
    xs, bs, change = inputs, baselines, total_change.to(result[0].dtype)
    buffers = [new_accumulators(inputs) for _ in levels]
    for j, level in enumerate(levels):
        new = slice(level.n_old, level.n_nodes)
        accumulate_path(
            gradient_fn, xs, bs, level.alphas[new], [later.weights[new] for later in levels[j:]], buffers[j:],
            steps_per_chunk(internal_batch_size, active.numel()), multiply_by_inputs=multiply_by_inputs,
            examples=None if active.numel() == n_examples else active, progress=progress,
        )
        error = completeness_sums(buffers[j], xs, bs, multiply_by_inputs) - change
        good = error.abs() <= atol + rtol * change.abs()
        done = good if j + 1 < len(levels) else torch.ones_like(good)
        finished, rows = active[done], done.nonzero().squeeze(1)
        for out, buffer in zip(result, buffers[j]):
            out[finished] = buffer[rows]
        n_steps[finished], delta[finished], converged[finished] = level.n_nodes, error[rows], good[rows]
        keep = ~done
        if not bool(keep.any()):
            break
        active, change = active[keep], change[keep]
        xs, bs = tuple(x[keep] for x in xs), tuple(b[keep] for b in bs)
        buffers = [()] * (j + 1) + [tuple(b[keep] for b in buffer) for buffer in buffers[j + 1 :]]
    return AdaptiveResult(result, n_steps, delta, converged)


class IntegratedGradients(GradientAttribution):
    """Integrated Gradients over any forward function, with captum's arguments.

    ``IntegratedGradients(forward_func, multiply_by_inputs=True, dtype=None).attribute(inputs,
    baselines, target, additional_forward_args, n_steps=50, method="gausslegendre",
    internal_batch_size=None, return_convergence_delta=False)`` returns what captum's does (within
    float32 rounding) for ``riemann_left``, ``riemann_right``, ``riemann_middle`` and
    ``gausslegendre``. ``riemann_trapezoid`` differs on purpose: captum's weights sum to
    ``(n - 1) / n``, so its result is short by ``1 / n`` even on a linear model; ours is exact there
    (see :mod:`saliency_fast.methods.quadrature`).

    ``n_steps="auto"`` integrates over nested Gauss-Kronrod-Patterson rules (1, 3, 7, 15, 31, 63,
    127, 255 points; ``method`` must then be ``"gausslegendre"``, the family's first levels being
    Gauss-Legendre rules), reusing every gradient evaluated so far, and stops per example once the
    completeness error ``|sum(attributions) - (F(x) - F(baseline))|`` is at most
    ``atol + rtol * |F(x) - F(baseline)|``, between ``min_steps`` and ``max_steps`` points (rounded
    to the level sizes). Examples that do not get there by ``max_steps`` keep the last level's
    result and a warning says so. The points used per example are in ``last_n_steps`` and the
    signed errors in ``last_convergence_delta`` (also the delta returned with
    ``return_convergence_delta=True``). Examples must not interact in the forward pass, since
    finished ones leave the batch.

    Steps go through the model in chunks of ``internal_batch_size`` rows (``n_steps`` points times
    examples; None: one chunk) into a running float32 accumulator. F(x) and F(baseline), for the
    deltas, run under ``torch.inference_mode`` at full precision, also when ``dtype`` autocasts the
    gradient passes.

    ``dtype=torch.bfloat16`` autocasts the forward (and so the backward) while interpolation and
    accumulation stay in float32. Measured with ``benchmarks/bench_methods.py`` on a random
    BERT-base (4 texts x 64 tokens, n_steps=50, an AMX CPU): the largest difference from the
    float32 result is 3.6e-3 of the largest attribution, the completeness error 0.4 % of
    F(x) - F(baseline) (float32: 2e-6), and it runs 3.1x faster than captum in float32.

    ``multiply_by_inputs=False`` returns the weighted mean gradient without the ``(x - b)`` factor;
    deltas then still measure completeness (captum sums the unmultiplied gradients instead).
    """

    def __init__(self, forward_func, multiply_by_inputs: bool = True, *, dtype: torch.dtype | None = None) -> None:
        super().__init__(forward_func, dtype=dtype)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        self._multiply_by_inputs = multiply_by_inputs
        self.last_n_steps: torch.Tensor | None = None
        self.last_convergence_delta: torch.Tensor | None = None

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        *,
        rtol: float = 0.01,
        atol: float = 0.0,
        min_steps: int = 3,
        max_steps: int = 127,
        show_progress: bool = False,
    ):
        """Attributions shaped like ``inputs`` (a tensor or a tuple), and with
        ``return_convergence_delta=True`` also the per-example signed completeness error
        ``sum(attributions) - (F(inputs) - F(baselines))``. ``rtol``, ``atol``, ``min_steps`` and
        ``max_steps`` apply to ``n_steps="auto"`` only."""
        inputs, is_tuple, target, args = self._prepare(inputs, target, additional_forward_args)
        # materialised once: every chunk reads the baselines, and the kernels want dense tensors
        baselines = tuple(b.contiguous() for b in _common.format_baselines(baselines, inputs, is_tuple))
        _common.check_positive_int("internal_batch_size", internal_batch_size, allow_none=True)
        auto = isinstance(n_steps, str)
        if auto:
            if n_steps != "auto":
                raise ValueError(f"n_steps must be a positive int or 'auto', got {n_steps!r}")
            if method != "gausslegendre":
                raise ValueError(
                    f"n_steps='auto' uses nested Gauss-Kronrod-Patterson rules: method must be 'gausslegendre', "
                    f"got {method!r}"
                )
            levels = quadrature.nested_levels(min_steps, max_steps)
            _check_tolerance("rtol", rtol)
            _check_tolerance("atol", atol)
        else:
            alphas, weights = quadrature.nodes_and_weights(method, n_steps)
        n_examples = inputs[0].shape[0]
        gradient_fn = gradient_function(self.forward_func, target, args, self.dtype)
        with _common.gradient_mode(self.forward_func), tqdm(
            total=None if auto else n_steps * n_examples, disable=not show_progress, unit="row",
            desc="integrated gradients",
        ) as progress:
            if auto:
                change = self._total_change(inputs, baselines, target, args)
                found = integrate_path_adaptive(
                    gradient_fn, inputs, baselines, change, levels, rtol=rtol, atol=atol,
                    internal_batch_size=internal_batch_size, multiply_by_inputs=self.multiplies_by_inputs,
                    progress=progress,
                )
                attributions, self.last_n_steps, delta = found.attributions, found.n_steps, found.delta
                _warn_unconverged(found, rtol, atol, max_steps)
            else:
                attributions = integrate_path(
                    gradient_fn, inputs, baselines, alphas, weights, steps_per_chunk(internal_batch_size, n_examples),
                    multiply_by_inputs=self.multiplies_by_inputs, progress=progress,
                )
                self.last_n_steps = torch.full((n_examples,), n_steps, dtype=torch.long, device=inputs[0].device)
                delta = None
                if return_convergence_delta:
                    change = self._total_change(inputs, baselines, target, args)
                    delta = completeness_sums(attributions, inputs, baselines, self.multiplies_by_inputs) - change
        for i, value in enumerate(attributions):
            _common.check_finite(
                f"the integrated gradients of {_common.input_label(i, len(inputs))}", value,
                " (the forward function has NaN/inf gradients on the path)",
            )
        self.last_convergence_delta = delta
        result = _common.format_output(is_tuple, tuple(a.to(x.dtype) for a, x in zip(attributions, inputs)))
        return (result, delta) if return_convergence_delta else result

    def _total_change(self, inputs, baselines, target, args) -> torch.Tensor:
        end = _common.forward_values(self.forward_func, inputs, target, args)
        start = _common.forward_values(self.forward_func, baselines, target, args)
        # in the accumulation's dtype; with integer inputs (token ids into layer IG) the output's, promoted
        # to at least float32
        like = inputs[0].dtype if inputs[0].is_floating_point() else torch.promote_types(end.dtype, torch.float32)
        change = (end - start).to(reference.opmath_dtype(like))
        _common.check_finite("F(inputs) - F(baselines)", change, " (the forward function is not finite there)")
        return change

    def compute_convergence_delta(
        self, attributions, start_point, end_point, target=None, additional_forward_args=None
    ) -> torch.Tensor:
        """captum's helper: ``sum(attributions) - (F(end_point) - F(start_point))`` per example."""
        end_point, is_tuple = _common.format_inputs(end_point)
        start_point = _common.format_baselines(start_point, end_point, is_tuple)
        attributions = attributions if isinstance(attributions, tuple) else (attributions,)
        n_examples = end_point[0].shape[0]
        target = _common.Target.parse(target, n_examples)
        args = _common.format_additional_forward_args(additional_forward_args, n_examples)
        change = self._total_change(end_point, start_point, target, args)
        return completeness_sums(attributions, end_point, start_point, self.multiplies_by_inputs) - change


def _check_tolerance(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value}")


def _warn_unconverged(found: AdaptiveResult, rtol: float, atol: float, max_steps: int) -> None:
    missed = int((~found.converged).sum())
    if missed:
        warnings.warn(
            f"n_steps='auto': {missed} of {found.converged.numel()} examples did not reach the completeness "
            f"tolerance (rtol={rtol}, atol={atol}) within max_steps={max_steps}; their largest |delta| is "
            f"{float(found.delta[~found.converged].abs().max()):.3g}. Raise max_steps or atol.",
            stacklevel=3,
        )
