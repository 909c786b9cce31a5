"""NoiseTunnel: SmoothGrad, SmoothGrad-squared and VarGrad around any attribution method.

Same arguments as ``captum.attr.NoiseTunnel``, plus a ``generator`` (or seed) for repeatable
noise and ``stdevs_relative`` for noise scaled to each example's spread. With the global RNG and
the same seed, the noise is drawn in captum's order and shapes, so results match captum's.
"""

from __future__ import annotations

import torch

from saliency_fast.methods import _common

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseTunnel:
    """Averages an attribution method over noisy copies of the inputs.

    ``nt_type``: ``smoothgrad`` (mean attribution), ``smoothgrad_sq`` (mean squared attribution),
    ``vargrad`` (variance: mean of squares minus square of mean). ``nt_samples`` noisy copies per
    example go through the wrapped method ``nt_samples_batch_size`` at a time (default: all);
    noise is Gaussian with standard deviation ``stdevs`` (one number, or one per input tensor).

    Extensions over captum (keyword-only):
        stdevs_relative: when True, ``stdevs`` are multiples of each example's standard deviation
            (``torch.std`` over all its values), so one setting fits inputs of any scale.
        generator: a ``torch.Generator`` or an int seed for the noise (and for
            ``draw_baseline_from_distrib``); None draws from torch's global RNG, as captum does
            (seed it with ``torch.manual_seed`` for repeatable results).
    """

    def __init__(self, attribution_method) -> None:
        if not callable(getattr(attribution_method, "attribute", None)):
            raise TypeError(
                f"attribution_method must be an attribution method object with .attribute, "
                f"got {type(attribution_method).__name__}"
            )
        self.attribution_method = attribution_method
        self.forward_func = getattr(attribution_method, "forward_func", None)

    def has_convergence_delta(self) -> bool:
        return self.attribution_method.has_convergence_delta()

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def attribute(
        self,
        inputs,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs=1.0,
        draw_baseline_from_distrib: bool = False,
        *,
        stdevs_relative: bool = False,
        generator: torch.Generator | int | None = None,
        **kwargs,
    ):
        """Smoothed attributions shaped like ``inputs``; with ``return_convergence_delta=True`` (for
        methods that have deltas) also the deltas of every noisy copy, ``n_examples * nt_samples``
        of them, batch by batch as captum orders them. Other ``kwargs`` go to the wrapped method."""
        if nt_type not in NT_TYPES:
            raise ValueError(f"nt_type must be one of {NT_TYPES}, got {nt_type!r}")
        _common.check_positive_int("nt_samples", nt_samples)
        _common.check_positive_int("nt_samples_batch_size", nt_samples_batch_size, allow_none=True)
        if not isinstance(stdevs_relative, bool):
            raise TypeError(f"stdevs_relative must be a bool, got {type(stdevs_relative).__name__}")
        inputs, is_tuple = _common.format_inputs(inputs)
        stdevs = _format_stdevs(stdevs, len(inputs))
        if stdevs_relative:
            stdevs = tuple(s * x.reshape(x.shape[0], -1).std(1) for s, x in zip(stdevs, inputs))
        generator = _make_generator(generator, inputs[0].device)
        want_delta = bool(kwargs.get("return_convergence_delta", False)) and self.has_convergence_delta()
        batch = nt_samples if nt_samples_batch_size is None else min(nt_samples, nt_samples_batch_size)
        sizes = [batch] * (nt_samples // batch) + ([nt_samples % batch] if nt_samples % batch else [])
        n_examples = inputs[0].shape[0]
        sums = squares = None
        deltas = []
        for size in sizes:
            noisy = tuple(_add_noise(x, s, size, generator) for x, s in zip(inputs, stdevs))
            expanded = _expand_kwargs(kwargs, size, n_examples, draw_baseline_from_distrib, generator)
            out = self.attribution_method.attribute(_common.format_output(is_tuple, noisy), **expanded)
            if want_delta:
                out, delta = out
                deltas.append(delta)
            attr_is_tuple = isinstance(out, tuple)
            out = out if attr_is_tuple else (out,)
            grouped = [a.reshape(n_examples, size, *a.shape[1:]) for a in out]
            batch_sums = [g.sum(1) for g in grouped]
            batch_squares = [g.pow(2).sum(1) for g in grouped]
            sums = batch_sums if sums is None else [t + b for t, b in zip(sums, batch_sums)]
            squares = batch_squares if squares is None else [t + b for t, b in zip(squares, batch_squares)]
        mean = [s * 1 / nt_samples for s in sums]
        mean_sq = [s * 1 / nt_samples for s in squares]
        if nt_type == "smoothgrad":
            result = mean
        elif nt_type == "smoothgrad_sq":
            result = mean_sq
        else:
            result = [sq - m * m for m, sq in zip(mean, mean_sq)]
        result = _common.format_output(attr_is_tuple, tuple(result))
        return (result, torch.cat(deltas)) if want_delta else result


def _format_stdevs(stdevs, n_inputs: int) -> tuple[float, ...]:
    values = stdevs if isinstance(stdevs, tuple) else (stdevs,) * n_inputs
    if len(values) != n_inputs:
        raise ValueError(f"stdevs must be one number or one per input tensor ({n_inputs}), got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"stdevs must be numbers, got {type(value).__name__}")
        if not value >= 0:
            raise ValueError(f"stdevs must be non-negative, got {value}")
    return tuple(float(v) for v in values)


def _make_generator(generator, device: torch.device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _add_noise(x: torch.Tensor, stdev, samples: int, generator) -> torch.Tensor:
    """``samples`` noisy copies of every example, each example's copies adjacent (captum's layout
    and draw: one standard normal tensor of the expanded float32 shape, times the stdev)."""
    repeated = x.repeat_interleave(samples, dim=0)
    noise = torch.randn(repeated.shape, generator=generator, device=x.device)
    if isinstance(stdev, torch.Tensor):
        stdev = stdev.repeat_interleave(samples).reshape(-1, *([1] * (x.dim() - 1))).to(noise.dtype)
    return (repeated + noise * stdev).to(x.dtype)


def _expand_kwargs(kwargs: dict, samples: int, n_examples: int, draw_baseline: bool, generator) -> dict:
    """The wrapped method's per-example arguments repeated for ``samples`` copies of each example."""
    expanded = dict(kwargs)
    if kwargs.get("additional_forward_args") is not None:
        args = _common.format_additional_forward_args(kwargs["additional_forward_args"], n_examples)
        expanded["additional_forward_args"] = _common.repeat_interleave_args(args, samples)
    target = kwargs.get("target")
    if isinstance(target, list):
        expanded["target"] = [t for t in target for _ in range(samples)]
    elif isinstance(target, torch.Tensor) and target.numel() > 1:
        expanded["target"] = target.repeat_interleave(samples, dim=0)
    if kwargs.get("baselines") is not None:
        expanded["baselines"] = _expand_baselines(kwargs["baselines"], samples, n_examples, draw_baseline, generator)
    if kwargs.get("feature_mask") is not None:
        masks = kwargs["feature_mask"]
        expanded["feature_mask"] = _map_tuple(
            masks, lambda m: m.repeat_interleave(samples, dim=0) if m.dim() > 0 and m.shape[0] > 1 else m
        )
    return expanded


def _expand_baselines(baselines, samples: int, n_examples: int, draw: bool, generator):
    def expand(b):
        if not isinstance(b, torch.Tensor) or b.dim() == 0:
            return b
        if draw:  # one baseline row drawn at random for every noisy copy
            rows = torch.randint(b.shape[0], (n_examples * samples,), generator=generator, device=b.device)
            return b[rows]
        return b.repeat_interleave(samples, dim=0) if b.shape[0] == n_examples and n_examples > 1 else b

    return _map_tuple(baselines, expand)


def _map_tuple(value, fn):
    return tuple(fn(v) for v in value) if isinstance(value, tuple) else fn(value)
