"""Perturbation methods: :class:`FeatureAblation` and :class:`Occlusion`, with captum's arguments.

Both replace groups of input features by the baseline and attribute to each group the drop of the
target, ``F(x) - F(x with the group ablated)``. ``perturbations_per_eval`` ablated copies of the
whole batch go through one forward pass, under ``torch.inference_mode`` (no autograd at all).
Inputs may be integer tensors (token ids, ablated to a baseline id).

The forward output, after the target is selected, must be one scalar per example, or one scalar
for the whole batch (then attributions have one row and ``perturbations_per_eval`` must be 1).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from saliency_fast.methods import _common

MaskBuilder = Callable[[int, int], tuple["torch.Tensor | None", ...]]


class FeatureAblation(_common.AttributionMethod):
    """Feature ablation: each feature (a group of elements sharing an id in ``feature_mask``;
    default: every element on its own) is set to the baseline in turn, and all its elements get
    ``F(x) - F(x ablated)``. A feature id may span several input tensors (ablated together).

    As in captum, the targeted output may be one scalar per example (attributions shaped like the
    inputs) or any other tensor that does not grow with the batch (a forward that aggregates the
    batch): attributions then have one row per output element, ``(n_outputs, *input.shape[1:])``.
    Attributions have the forward output's dtype (an ``int`` forward gives integer attributions).
    Inputs after the first may have another dim 0 (captum's sparse features, ablated whole).

    ``dtype=torch.bfloat16`` / ``torch.float16`` autocasts the forward passes (the differences are
    taken and returned in float32).
    """

    _weighted = False
    _progress_label = "Feature Ablation attribution"

    @property
    def multiplies_by_inputs(self) -> bool:
        return True  # captum's value: an ablation result scales with the input's distance from the baseline

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ):
        """Attributions shaped like ``inputs`` (a tensor or a tuple). ``feature_mask``: an integer
        tensor per input, broadcastable to it (dim 0 of size 1 or the batch size), holding feature
        ids."""
        return self._feature_attribute(inputs, baselines, target, additional_forward_args, feature_mask,
                                       perturbations_per_eval, show_progress, futures=False)

    def attribute_future(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        feature_mask=None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> torch.futures.Future:
        """:meth:`attribute` for a ``forward_func`` that returns ``torch.futures.Future`` objects:
        every forward is started before the first is waited on, and the attributions come back as a
        (completed) future."""
        result = self._feature_attribute(inputs, baselines, target, additional_forward_args, feature_mask,
                                         perturbations_per_eval, show_progress, futures=True)
        done: torch.futures.Future = torch.futures.Future()
        done.set_result(result)
        return done

    def _feature_attribute(self, inputs, baselines, target, additional_forward_args, feature_mask,
                           perturbations_per_eval, show_progress, futures: bool):
        inputs, is_tuple = _common.format_inputs(inputs, require_float=False, same_batch=False)
        masks = format_feature_mask(feature_mask, inputs, is_tuple)
        ids = torch.unique(torch.cat([m.reshape(-1).cpu() for m in masks]))
        dims = [(1,) * m.dim() for m in masks]

        def build(start: int, stop: int):
            chosen = ids[start:stop]
            return tuple(m.unsqueeze(0) == chosen.to(m.device).view(-1, *d) for m, d in zip(masks, dims))

        result = self._ablate(
            inputs, is_tuple, baselines, target, additional_forward_args, ids.numel(), build,
            perturbations_per_eval, show_progress, futures,
        )
        return _common.format_output(is_tuple, result)

    def _ablate(
        self, inputs, is_tuple, baselines, target, additional_forward_args, n_perturbations: int,
        build: MaskBuilder, perturbations_per_eval: int, show_progress: bool, futures: bool = False,
    ) -> _common.Tensors:
        """Run the perturbations ``build(start, stop)`` describes (per input: a bool mask
        ``(stop - start, 1 or n_examples, *example_shape)`` of the elements set to the baseline, or
        None) in batches of ``perturbations_per_eval`` and accumulate the output drops. With
        ``futures`` the forward returns futures: all are started, then waited on in order."""
        _common.check_positive_int("perturbations_per_eval", perturbations_per_eval)
        baselines = _common.format_baselines(baselines, inputs, is_tuple)
        n_examples = inputs[0].shape[0]
        target = _common.Target.parse(target, n_examples)
        args = _common.format_additional_forward_args(additional_forward_args, n_examples)
        with tqdm(total=n_perturbations, disable=not show_progress, desc=self._progress_label,
                  unit="perturbation") as bar:
            initial = self._evaluate(inputs, target, args, n_examples, futures)
            accumulator = None if futures else _DropAccumulator(initial, inputs, self._weighted, self.dtype is not None)
            pending = []  # with futures: every forward starts before the first is waited on
            for start in range(0, n_perturbations, perturbations_per_eval):
                stop = min(start + perturbations_per_eval, n_perturbations)
                p, masks = stop - start, build(start, stop)
                ablated = tuple(
                    x.repeat(p, *([1] * (x.dim() - 1))) if m is None
                    else torch.where(m, b, x).reshape(p * x.shape[0], *x.shape[1:])
                    for x, b, m in zip(inputs, baselines, masks)
                )
                output = self._evaluate(ablated, target, _common.repeat_args(args, p), p * n_examples, futures)
                if futures:
                    pending.append((p, masks, output))
                else:
                    accumulator.add(p, masks, output, perturbations_per_eval)
                    bar.update(p)
            if futures:
                accumulator = _DropAccumulator(initial.wait(), inputs, self._weighted, self.dtype is not None)
                for p, masks, output in pending:
                    accumulator.add(p, masks, output.wait(), perturbations_per_eval)
                    bar.update(p)
        return accumulator.result()

    def _evaluate(self, inputs, target: _common.Target, args, rows: int, futures: bool):
        """The targeted outputs of one forward (a future of them when ``futures``)."""
        output = _inference_forward(self.forward_func, self.dtype, inputs, args)
        if isinstance(output, torch.Future) != futures:
            raise _common.ArgumentError(
                "forward_func returned a torch.futures.Future: call attribute_future, not attribute" if not futures
                else f"attribute_future needs a forward_func that returns torch.futures.Future, got "
                     f"{type(output).__name__}"
            )
        if futures:
            return output.then(lambda done: _targeted_output(target, done.value(), rows))
        return _targeted_output(target, output, rows)


def _inference_forward(forward_func, dtype, inputs, args):
    with torch.inference_mode(), _common.autocast(dtype, inputs[0].device):
        return _common.run_forward(forward_func, inputs, args)


def targeted_outputs(forward_func, dtype, inputs, target: _common.Target, args, rows: int) -> torch.Tensor:
    """The targeted outputs of one forward under ``torch.inference_mode`` (``dtype``: autocast):
    ``(rows,)``, or ``(1,)`` when the forward aggregates the batch into one value."""
    selected = _targeted_output(target, _inference_forward(forward_func, dtype, inputs, args), rows)
    if selected.numel() == 1 and (selected.dim() == 0 or selected.shape[0] != rows or rows == 1):
        return selected.reshape(1)
    return _common.scalar_per_row(selected, rows)


def _targeted_output(target: _common.Target, output, rows: int) -> torch.Tensor:
    """The targeted output as a tensor (python numbers as captum reads them: int64 / float64)."""
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        output = torch.tensor(output, dtype=torch.int64 if isinstance(output, int) else torch.float64)
    return target.select(output, rows)


class _DropAccumulator:
    """Sums ``F(x) - F(x ablated)`` into each ablated element, per output element.

    ``n_outputs`` is the number of elements of the unperturbed targeted output: one per example, or
    as many as a forward that aggregates the batch returns. A batch of ``p`` perturbations must give
    ``p`` times as many (captum's rule: with ``p > 1`` its dim 0 grows ``p``-fold).
    """

    def __init__(self, initial: torch.Tensor, inputs: _common.Tensors, weighted: bool, autocast: bool):
        self.initial, self.inputs, self.weighted = initial, inputs, weighted
        self.n_outputs = initial.numel()
        # the result's dtype is the forward's (captum's); sums run in float32, float64 for float64 or integer
        # outputs (exact for integers), and under autocast the result stays float32
        self.out_dtype = torch.float32 if autocast else initial.dtype
        exact = initial.dtype == torch.float64 or not initial.is_floating_point()
        self.dtype = torch.float64 if exact else torch.float32
        self.flat = initial.reshape(1, -1).to(self.dtype)
        self.totals = [torch.zeros((self.n_outputs, *x.shape[1:]), dtype=self.dtype, device=x.device) for x in inputs]
        self.counts = [torch.zeros((1, *x.shape[1:]), dtype=self.dtype, device=x.device) for x in inputs]

    def add(self, p: int, masks, output: torch.Tensor, perturbations_per_eval: int) -> None:
        if perturbations_per_eval > 1 and not (
            output.dim() > 0 and self.initial.dim() > 0 and output.shape[0] == p * self.initial.shape[0]
        ):
            raise _common.ArgumentError(
                f"with perturbations_per_eval > 1 the targeted forward output must grow with the batch: it has shape "
                f"{tuple(self.initial.shape)} for the inputs and {tuple(output.shape)} for {p} perturbed copies "
                "(forward_func aggregates the batch, so perturbed copies cannot share a forward pass: "
                "perturbations_per_eval must be 1)"
            )
        if output.numel() != p * self.n_outputs:
            raise _common.ArgumentError(
                f"the targeted forward output has {self.n_outputs} elements for the inputs but "
                f"{output.numel()} for {p} perturbed copies; expected {p * self.n_outputs}"
            )
        drop = self.flat - output.reshape(p, self.n_outputs).to(self.dtype)
        for i, (total, count, m, x) in enumerate(zip(self.totals, self.counts, masks, self.inputs)):
            if m is None or x.numel() == 0:
                continue
            if m.shape[1] not in (1, self.n_outputs):
                raise _common.ArgumentError(
                    f"the targeted forward output has {self.n_outputs} elements for {m.shape[1]} examples (it "
                    f"aggregates the batch), so feature_mask[{i}] must be shared by the examples (dim 0 of size 1)"
                )
            total += (drop.reshape(p, self.n_outputs, *([1] * (x.dim() - 1))) * m).sum(0)
            if self.weighted:
                count += m.sum(0, dtype=self.dtype)

    def result(self) -> _common.Tensors:
        if self.weighted:  # averages: at least float32 (captum's), float64 kept for a float64 forward
            dtype = torch.promote_types(self.out_dtype, torch.float32)  # float32 for integer outputs too
            return tuple((total / count).to(dtype) for total, count in zip(self.totals, self.counts))
        return tuple(total.to(self.out_dtype) for total in self.totals)


class Occlusion(FeatureAblation):
    """Occlusion (Zeiler & Fergus, 2014): a window of shape ``sliding_window_shapes`` slides over
    each input with ``strides``; each position is set to the baseline and the output drop is
    credited to the window's elements, averaged over the windows covering each element. Windows
    that would run past the end are cut at the border, as captum does. Same arguments as
    ``captum.attr.Occlusion``; ``dtype`` as for :class:`FeatureAblation`.
    """

    _weighted = True
    _progress_label = "Occlusion attribution"

    def attribute_future(self, *args, **kwargs):
        """Not implemented, as in captum (only :class:`FeatureAblation` takes futures)."""
        raise NotImplementedError("Occlusion.attribute_future is not implemented (as in captum)")

    def attribute(
        self,
        inputs,
        sliding_window_shapes,
        strides=None,
        baselines=None,
        target=None,
        additional_forward_args=None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ):
        """Attributions shaped like ``inputs`` (a tensor or a tuple). ``sliding_window_shapes``: one
        tuple (one entry per non-batch dim) per input; ``strides``: None (1), an int, or per input an
        int or a tuple."""
        inputs, is_tuple = _common.format_inputs(inputs, require_float=False)
        shapes = _format_windows(sliding_window_shapes, inputs)
        strides = _format_strides(strides, inputs)
        windows = [
            (t, starts)
            for t, (x, shape, stride) in enumerate(zip(inputs, shapes, strides))
            for starts in _window_starts(tuple(x.shape[1:]), shape, stride, t)
        ]

        def build(start: int, stop: int):
            chosen = windows[start:stop]
            masks = [None] * len(inputs)
            for j, (t, starts) in enumerate(chosen):
                if masks[t] is None:
                    masks[t] = torch.zeros((stop - start, 1, *inputs[t].shape[1:]), dtype=torch.bool, device=inputs[t].device)
                masks[t][(j, 0, *(slice(s, s + w) for s, w in zip(starts, shapes[t])))] = True
            return tuple(masks)

        result = self._ablate(
            inputs, is_tuple, baselines, target, additional_forward_args, len(windows), build,
            perturbations_per_eval, show_progress,
        )
        return _common.format_output(is_tuple, result)


def format_feature_mask(feature_mask, inputs: _common.Tensors, is_tuple: bool) -> _common.Tensors:
    if feature_mask is None:  # every element its own feature, numbered across the inputs
        masks, offset = [], 0
        for x in inputs:
            size = math.prod(x.shape[1:])
            masks.append(torch.arange(offset, offset + size, device=x.device).reshape(1, *x.shape[1:]))
            offset += size
        return tuple(masks)
    items = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(items) != len(inputs):
        raise ValueError(f"feature_mask must have one tensor per input ({len(inputs)}), got {len(items)}")
    out = []
    for i, (m, x) in enumerate(zip(items, inputs)):
        label = f"feature_mask[{i}]" if is_tuple else "feature_mask"
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(m).__name__}")
        if m.dtype.is_floating_point or m.dtype.is_complex or m.dtype == torch.bool:
            raise TypeError(f"{label} must hold integer feature ids, got dtype {m.dtype}")
        try:
            fits = torch.broadcast_shapes(m.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"{label} has shape {tuple(m.shape)}, which does not broadcast to its input's {tuple(x.shape)}")
        m = m.reshape((1,) * (x.dim() - m.dim()) + tuple(m.shape))
        out.append(m.to(x.device))
    return tuple(out)


def _is_int_tuple(value, length: int) -> bool:
    return (
        isinstance(value, tuple) and len(value) == length
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _format_windows(shapes, inputs: _common.Tensors) -> list[tuple[int, ...]]:
    if isinstance(shapes, tuple) and shapes and all(isinstance(s, int) for s in shapes):
        shapes = (shapes,)
    if not isinstance(shapes, tuple) or len(shapes) != len(inputs):
        raise _common.ArgumentError(f"sliding_window_shapes must be one tuple per input tensor ({len(inputs)}), got {shapes!r}")
    for i, (shape, x) in enumerate(zip(shapes, inputs)):
        if not _is_int_tuple(shape, x.dim() - 1):
            raise _common.ArgumentError(
                f"sliding_window_shapes[{i}] must be a tuple of {x.dim() - 1} ints (one per non-batch dim of "
                f"the input, shape {tuple(x.shape)}), got {shape!r}"
            )
        if any(w < 1 or w > n for w, n in zip(shape, x.shape[1:])):
            raise _common.ArgumentError(f"sliding_window_shapes[{i}] = {shape} must lie between 1 and the input's sizes {tuple(x.shape[1:])}")
    return list(shapes)


def _format_strides(strides, inputs: _common.Tensors) -> list[tuple[int, ...]]:
    if strides is None:
        strides = tuple(1 for _ in inputs)
    if len(inputs) == 1 and not (isinstance(strides, tuple) and len(strides) == 1):
        strides = (strides,)  # captum's rule: a single input's stride need not be wrapped
    if not isinstance(strides, tuple) or len(strides) != len(inputs):
        raise _common.ArgumentError(f"strides must be given per input tensor ({len(inputs)}), got {strides!r}")
    out = []
    for i, (stride, x) in enumerate(zip(strides, inputs)):
        if isinstance(stride, int) and not isinstance(stride, bool):
            stride = (stride,) * (x.dim() - 1)
        if not _is_int_tuple(stride, x.dim() - 1) or any(s < 1 for s in stride):
            raise _common.ArgumentError(
                f"strides[{i}] must be a positive int or a tuple of {x.dim() - 1} positive ints, got {strides[i]!r}"
            )
        out.append(stride)
    return out


def _window_starts(sizes, shape, stride, index: int):
    """Window start offsets, first dim fastest (captum's order); the last window of a dim may run
    past the end and is then cut."""
    counts = []
    for d, (n, w, s) in enumerate(zip(sizes, shape, stride)):
        if n > w and s > w:
            raise _common.ArgumentError(
                f"strides[{index}] = {stride} exceeds sliding_window_shapes[{index}] = {shape} in dim {d + 1}; "
                "elements between windows would never be occluded"
            )
        counts.append(math.ceil((n - w) / s) + 1)
    for reversed_index in itertools.product(*(range(c) for c in reversed(counts))):
        yield tuple(k * s for k, s in zip(reversed(reversed_index), stride))
