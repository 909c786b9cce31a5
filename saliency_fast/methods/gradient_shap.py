"""GradientSHAP (Lundberg & Lee, 2017; captum's ``GradientShap``): the expected gradient times
``(x - b)`` over random baselines ``b`` from a set, random points on the line from ``b`` to ``x``
and Gaussian noise on ``x``.

As in captum, it is SmoothGrad (one baseline drawn per noisy copy) around
:class:`InputBaselineXGradient`, one gradient at a random point per copy; here all ``n_samples``
copies of every example go through one forward and backward pass. The draws are captum's: the
noise from torch's global RNG, the baseline rows and the points on the line from numpy's, so with
the same seeds (``torch.manual_seed``, ``np.random.seed``) the samples are captum's.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from saliency_fast.methods import _common
from saliency_fast.methods.integrated_gradients import IntegratedGradients, completeness_sums
from saliency_fast.methods import noise_tunnel


class InputBaselineXGradient(IntegratedGradients):
    """The gradient at one point drawn uniformly on the line from each baseline to its input,
    times ``(input - baseline)`` (``multiply_by_inputs``): a one-point, random-node Integrated
    Gradients, as captum's class of that name. Points are drawn from numpy's global RNG, as captum
    draws them."""

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False):
        inputs, is_tuple, target, args = self._prepare(inputs, target, additional_forward_args)
        baselines = _common.format_baselines(baselines, inputs, is_tuple)
        n_rows = inputs[0].shape[0]
        alphas = torch.from_numpy(np.random.uniform(0.0, 1.0, n_rows)).to(inputs[0].dtype)
        points = tuple(
            (b + alphas.to(x.device).view(-1, *([1] * (x.dim() - 1))) * (x - b)).to(x.dtype)
            for x, b in zip(inputs, baselines)
        )
        with _common.gradient_mode(self.forward_func):
            grads = self.gradients(points, target, args)
        attributions = tuple(
            g * (x - b) if self.multiplies_by_inputs else g for g, x, b in zip(grads, inputs, baselines)
        )
        result = _common.format_output(is_tuple, attributions)
        if not return_convergence_delta:
            return result
        change = self._total_change(inputs, baselines, target, args)
        return result, completeness_sums(attributions, inputs, baselines, self.multiplies_by_inputs) - change


class GradientShap(_common.AttributionMethod):
    """GradientSHAP with captum's arguments: ``attribute(inputs, baselines, n_samples=5,
    stdevs=0.0, target=None, additional_forward_args=None, return_convergence_delta=False)``.

    ``baselines``: a tensor (or tuple) whose rows are the reference distribution, or a function
    returning it (called with the inputs if it takes an argument). The deltas are per noisy copy,
    ``n_examples * n_samples`` of them. Random draws come from torch's global RNG.
    """

    def __init__(self, forward_func, multiply_by_inputs: bool = True, *, dtype: torch.dtype | None = None) -> None:
        super().__init__(forward_func, dtype=dtype)
        self._inner = InputBaselineXGradient(forward_func, multiply_by_inputs, dtype=dtype)

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._inner.multiplies_by_inputs

    def attribute(self, inputs, baselines, n_samples: int = 5, stdevs=0.0, target=None,
                  additional_forward_args=None, return_convergence_delta: bool = False):
        """Attributions shaped like ``inputs`` (and the deltas with ``return_convergence_delta``)."""
        if callable(baselines):
            baselines = baselines(inputs) if inspect.signature(baselines).parameters else baselines()
        items = baselines if isinstance(baselines, tuple) else (baselines,)
        if not all(isinstance(b, torch.Tensor) and b.dim() > 0 for b in items):
            raise _common.ArgumentError(
                "baselines must be a tensor (or a tuple of tensors) of baseline rows, or a function returning them, "
                f"got {type(items[0]).__name__}"
            )
        _common.check_positive_int("n_samples", n_samples)
        formatted, is_tuple = _common.format_inputs(inputs)
        stdevs = noise_tunnel._format_stdevs(stdevs, len(formatted))
        n_examples = formatted[0].shape[0]
        noisy = tuple(noise_tunnel._add_noise(x, s, n_samples, None) for x, s in zip(formatted, stdevs))
        drawn = tuple(b[np.random.choice(b.shape[0], n_samples * n_examples).tolist()] for b in items)
        expanded = noise_tunnel._expand_kwargs(
            {"target": target, "additional_forward_args": additional_forward_args}, n_samples, n_examples, False, None
        )
        out = self._inner.attribute(
            _common.format_output(is_tuple, noisy), _common.format_output(is_tuple, drawn),
            return_convergence_delta=return_convergence_delta, **expanded,
        )
        attributions, delta = out if return_convergence_delta else (out, None)
        attributions = attributions if is_tuple else (attributions,)
        mean = tuple(a.reshape(n_examples, n_samples, *a.shape[1:]).mean(1) for a in attributions)
        result = _common.format_output(is_tuple, mean)
        return (result, delta) if return_convergence_delta else result

    def compute_convergence_delta(self, attributions, start_point, end_point, target=None,
                                  additional_forward_args=None) -> torch.Tensor:
        """``sum(attributions) - (F(end_point) - F(start_point))`` per example; ``start_point`` holds
        one baseline per example (or one for all), not the baseline distribution."""
        ends = end_point if isinstance(end_point, tuple) else (end_point,)
        starts = start_point if isinstance(start_point, tuple) else (start_point,)
        for s, e in zip(starts, ends):
            if isinstance(s, torch.Tensor) and isinstance(e, torch.Tensor) and s.dim() == e.dim() \
                    and s.shape[0] not in (1, e.shape[0]):
                raise _common.ArgumentError(
                    f"start_point has {s.shape[0]} rows but end_point {e.shape[0]}: pass one baseline per example"
                )
        return self._inner.compute_convergence_delta(attributions, start_point, end_point, target,
                                                     additional_forward_args)

    def attribute_future(self):
        raise NotImplementedError("GradientShap does not support attribution of future samples.")
