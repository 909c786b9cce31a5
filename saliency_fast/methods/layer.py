"""Layer attribution: how much the activations of a module inside the model carried its output.

Captum-compatible classes over any module(s) of any forward function (``layer=`` a module or a
list of modules; ``attribute_to_layer_input=True`` attributes to the module's input instead of
its output):

- :class:`LayerSaliency`: the gradient of the target w.r.t. the layer's activations, by default its
  absolute value (captum has no class of this name: it is ``LayerGradientXActivation`` with
  ``multiply_by_inputs=False``, plus ``abs`` as in ``Saliency``);
- :class:`LayerGradientXActivation`: that gradient times the activations;
- :class:`LayerIntegratedGradients`: Integrated Gradients w.r.t. the layer's activations, on the
  chunked path integrator of :mod:`.integrated_gradients` (native interpolation and accumulation).

With ``h`` the layer's activations, ``x`` the inputs, ``b`` the baselines and ``F`` the targeted
output, layer IG has two paths (``path=``):

- ``"layer"`` (captum's ``LayerIntegratedGradients``, the default): the straight line between the
  activations, ``A = (h(x) - h(b)) * int_0^1 dF/dh at h = h(b) + a (h(x) - h(b)) da``. The forward
  runs on the inputs with the layer's output replaced by each path point, so whatever does not
  pass through the layer sees ``x``. When the output depends on the inputs only through the layer
  (a transformer block), ``sum(A) = F(x) - F(b)`` up to the quadrature error.
- ``"inputs"``: the straight line between the inputs, ``A = (h(x) - h(b)) * int_0^1 dF/dh at
  h = h(b + a (x - b)) da``: the gradient where the model itself takes the activations when its
  inputs move (captum's ``InternalInfluence`` times ``h(x) - h(b)``). One forward per batch of
  path points serves every layer, each getting exactly what it gets alone, which makes a map over
  all blocks cost one IG run instead of one per layer. It equals ``"layer"`` when ``h`` is affine in
  the inputs (the embedding layer: plain IG); otherwise ``h``'s path is curved and completeness
  holds only approximately, so ``"layer"`` is the one to use for exact completeness per layer.

The activations of a layer are its output, or with ``attribute_to_layer_input`` its positional
inputs, keeping the floating-point tensors (a tensor, or those among a tuple): a Hugging Face
block called as ``block(hidden_states, mask, cache)`` is attributed to ``hidden_states``. Where
every item is a floating tensor this is captum's convention. Dim 0 of each activation must be the
examples. A layer must run exactly once per forward.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from saliency_fast.methods import _common, quadrature
from saliency_fast.methods.gradient import GradientAttribution
from saliency_fast.methods.integrated_gradients import (
    GradientFn,
    IntegratedGradients,
    _check_tolerance,
    _warn_unconverged,
    completeness_sums,
    integrate_path,
    integrate_path_adaptive,
    steps_per_chunk,
)

PATHS = ("layer", "inputs")
Activations = list[_common.Tensors]  # per layer, its activation tensors


def format_layers(layer) -> tuple[list[nn.Module], bool]:
    """``(modules, whether they came as a list)`` after checking ``layer``."""
    if isinstance(layer, nn.Module):
        return [layer], False
    if isinstance(layer, (list, tuple)) and layer and all(isinstance(m, nn.Module) for m in layer):
        if len({id(m) for m in layer}) != len(layer):
            raise ValueError("layer must not name the same module twice")
        return list(layer), True
    raise TypeError(f"layer must be a torch.nn.Module or a non-empty list of modules, got {_describe(layer)}")


def _describe(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {', '.join(sorted({type(v).__name__ for v in value})) or 'nothing'}"
    return type(value).__name__


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _floating_items(value, label: str, on_input: bool, first_only: bool = False):
    """The floating tensors of a layer's output (or positional inputs), only the first with
    ``first_only``, and a function that puts replacements for them back in their places."""
    if isinstance(value, torch.Tensor):
        items, is_tensor = (value,), True
    elif isinstance(value, (tuple, list)):
        items, is_tensor = tuple(value), False
    else:
        raise TypeError(
            f"{label} returned a {type(value).__name__}; layer attribution needs a tensor or a tuple of tensors")
    places = [i for i, item in enumerate(items) if isinstance(item, torch.Tensor) and item.is_floating_point()]
    if not places:
        what = "positional inputs" if on_input else "output"
        raise ValueError(f"{label} has no floating-point tensor in its {what} to attribute to")
    if first_only:
        places = places[:1]

    def rebuild(tensors: _common.Tensors):
        if is_tensor:
            return tensors[0]
        out = list(items)
        for i, tensor in zip(places, tensors):
            out[i] = tensor
        return type(value)(out)

    return tuple(items[i] for i in places), rebuild


class LayerTap:
    """Forward hooks on the attributed modules for the forward passes inside a ``with`` block.

    Without ``replacements`` each module's activations are recorded in :attr:`values`; under grad
    mode an activation that does not require grad yet (nothing upstream does) is swapped for a
    detached leaf that does, so gradients can be taken w.r.t. every recorded activation and flow
    from one layer to the layers after it. With ``replacements`` (per module, tensors shaped like
    its activations) the module's activations are replaced by them.
    """

    def __init__(self, modules: Sequence[nn.Module], labels: Sequence[str], on_input: bool = False,
                 replacements: Activations | None = None, first_only: bool = False):
        self.modules, self.labels, self.on_input = list(modules), list(labels), on_input
        self.replacements, self.first_only = replacements, first_only
        self.values: list[_common.Tensors | None] = [None] * len(self.modules)
        self._handles: list = []

    def __enter__(self) -> LayerTap:
        for i, module in enumerate(self.modules):
            if self.on_input:
                handle = module.register_forward_pre_hook(lambda _module, args, i=i: self._swap(i, args))
            else:
                handle = module.register_forward_hook(lambda _module, _args, output, i=i: self._swap(i, output))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _swap(self, i: int, value):
        label = self.labels[i]
        if self.values[i] is not None:
            raise ValueError(f"{label} ran more than once in one forward pass; layer attribution needs a module "
                             "that runs once per forward")
        tensors, rebuild = _floating_items(value, label, self.on_input, self.first_only)
        if self.replacements is not None:
            new = self.replacements[i]
            for old, replacement in zip(tensors, new):
                if replacement.shape != old.shape:
                    raise ValueError(f"the path points for {label} have shape {tuple(replacement.shape)} but its "
                                     f"activations have {tuple(old.shape)} in this forward")
            self.values[i] = new
            return rebuild(new)
        if torch.is_grad_enabled() and not all(t.requires_grad for t in tensors):
            tensors = tuple(t if t.requires_grad else t.detach().requires_grad_(True) for t in tensors)
            self.values[i] = tensors
            return rebuild(tensors)
        self.values[i] = tensors
        return None

    def collected(self, rows: int) -> Activations:
        """The recorded activations, checked: every module ran, with ``rows`` examples in dim 0."""
        for label, values in zip(self.labels, self.values):
            if values is None:
                raise ValueError(f"{label} did not run in the forward pass; pass a module the forward calls")
            for value in values:
                if value.dim() == 0 or value.shape[0] != rows:
                    raise ValueError(
                        f"{label} has activations of shape {tuple(value.shape)} for a forward over {rows} examples; "
                        "layer attribution needs the examples in dim 0"
                    )
        return list(self.values)


def flatten(per_layer: Activations) -> _common.Tensors:
    return tuple(t for values in per_layer for t in values)


def nest(flat: Sequence[torch.Tensor], like: Activations) -> Activations:
    """``flat`` split back into per-layer tuples of the sizes in ``like``."""
    out, start = [], 0
    for values in like:
        out.append(tuple(flat[start : start + len(values)]))
        start += len(values)
    return out


def _targeted(forward_func, inputs: _common.Tensors, target: _common.Target, args, dtype) -> torch.Tensor:
    rows = inputs[0].shape[0]
    with _common.autocast(dtype, inputs[0].device):
        output = _common.run_forward(forward_func, inputs, args)
    return _common.scalar_per_row(target.select(output, rows), rows)


def check_grad_kwargs(grad_kwargs) -> dict:
    """captum's ``grad_kwargs`` (extra keyword arguments of ``torch.autograd.grad``) as a dict."""
    if grad_kwargs is None:
        return {}
    if not isinstance(grad_kwargs, dict) or not all(isinstance(k, str) for k in grad_kwargs):
        raise TypeError(f"grad_kwargs must be a dict of torch.autograd.grad keyword arguments, got "
                        f"{type(grad_kwargs).__name__}")
    reserved = {"outputs", "inputs", "grad_outputs"} & grad_kwargs.keys()
    if reserved:
        raise ValueError(f"grad_kwargs must not set {sorted(reserved)}: the method chooses what is differentiated")
    return grad_kwargs


def _gradients_wrt(selected: torch.Tensor, wrt: _common.Tensors, grad_kwargs: dict | None = None) -> _common.Tensors:
    if not selected.requires_grad:  # the target does not depend on any attributed activation
        return tuple(torch.zeros_like(t) for t in wrt)
    options = {"allow_unused": True, "materialize_grads": True, **(grad_kwargs or {})}
    grads = torch.autograd.grad(selected.sum(), wrt, **options)
    # an unused activation has a zero gradient, whatever grad_kwargs said about materializing it
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt))


class LayerSet:
    """The attributed modules with what reads and writes their activations (``first_only``: only
    the first floating tensor of each, as a Hugging Face block's hidden states before the extras
    it returns, such as T5's position bias)."""

    def __init__(self, modules: Sequence[nn.Module], on_input: bool = False, labels: Sequence[str] | None = None,
                 first_only: bool = False):
        self.modules = list(modules)
        self.on_input, self.first_only = on_input, first_only
        self.labels = list(labels) if labels is not None else [
            f"layer {type(m).__name__}" if len(self.modules) == 1 else f"layer[{i}] ({type(m).__name__})"
            for i, m in enumerate(self.modules)
        ]

    def tap(self, replacements: Activations | None = None) -> LayerTap:
        return LayerTap(self.modules, self.labels, self.on_input, replacements, self.first_only)

    def activations(self, forward_func, inputs: _common.Tensors, args) -> Activations:
        """Each layer's activations for ``inputs``, at full precision, without gradients."""
        with torch.no_grad(), self.tap() as tap:
            _common.run_forward(forward_func, inputs, args)
        return tap.collected(inputs[0].shape[0])

    def gradients(self, forward_func, inputs: _common.Tensors, target: _common.Target, args,
                  dtype=None, grad_kwargs: dict | None = None) -> tuple[Activations, Activations]:
        """``(gradients, activations)`` of every layer at ``inputs``, from one forward and backward."""
        with torch.enable_grad(), self.tap() as tap:  # enable_grad: callers may sit inside torch.no_grad()
            selected = _targeted(forward_func, tuple(x.detach() for x in inputs), target, args, dtype)
            acts = tap.collected(inputs[0].shape[0])
            grads = _gradients_wrt(selected, flatten(acts), grad_kwargs)
        return nest(grads, acts), [tuple(a.detach() for a in values) for values in acts]

    def replaced_gradients(self, forward_func, inputs: _common.Tensors, values: Activations,
                           target: _common.Target, args, dtype=None, grad_kwargs: dict | None = None) -> Activations:
        """Gradients w.r.t. ``values`` put in place of the layers' activations in a forward on ``inputs``."""
        leaves = [tuple(v.detach().requires_grad_(True) for v in layer_values) for layer_values in values]
        with torch.enable_grad(), self.tap(leaves) as tap:  # enable_grad: callers may sit inside torch.no_grad()
            selected = _targeted(forward_func, inputs, target, args, dtype)
            tap.collected(inputs[0].shape[0])
            return nest(_gradients_wrt(selected, flatten(leaves), grad_kwargs), leaves)


class _LayerMethod(GradientAttribution):
    """What the layer methods share: the layer(s), captum's ``device_ids`` (None only) and output form.

    Inputs may be integer tensors (token ids into an embedding layer, captum's text pattern): the
    gradients are taken w.r.t. the layer's activations, never w.r.t. the inputs. The methods work
    inside ``torch.no_grad()`` too (they turn gradients on for their own passes).
    """

    _float_inputs = False

    def __init__(self, forward_func, layer, device_ids=None, *, dtype: torch.dtype | None = None) -> None:
        super().__init__(forward_func, dtype=dtype)
        if device_ids is not None:
            raise ValueError("device_ids (DataParallel) is not supported; pass None and a module on one device")
        self.modules, self._is_list = format_layers(layer)
        self.layer = layer
        self.device_ids = None

    def layer_set(self, attribute_to_layer_input: bool) -> LayerSet:
        _check_bool("attribute_to_layer_input", attribute_to_layer_input)
        return LayerSet(self.modules, attribute_to_layer_input)

    def _format_result(self, per_layer: Activations):
        """captum's form: per layer a tensor (a tuple when it has several activation tensors); a list
        of those when ``layer`` was a list."""
        formatted = [values if len(values) > 1 else values[0] for values in per_layer]
        return formatted if self._is_list else formatted[0]

    def _layer_gradients(self, inputs, target, additional_forward_args, attribute_to_layer_input, grad_kwargs=None):
        inputs, _, target, args = self._prepare(inputs, target, additional_forward_args)
        grad_kwargs = check_grad_kwargs(grad_kwargs)
        layers = self.layer_set(attribute_to_layer_input)
        with _common.gradient_mode(self.forward_func, keep=tuple(self.modules)):
            grads, acts = layers.gradients(self.forward_func, inputs, target, args, self.dtype, grad_kwargs)
        for label, values in zip(layers.labels, grads):
            for grad in values:
                _common.check_finite(f"the gradient w.r.t. {label}", grad,
                                     " (the forward function is not finite there)")
        return grads, acts


class LayerSaliency(_LayerMethod):
    """The gradient of the target w.r.t. a layer's activations (``abs=True``: its absolute value).

    ``LayerSaliency(forward_func, layer, device_ids=None, dtype=None).attribute(inputs, target=None,
    abs=True, additional_forward_args=None, attribute_to_layer_input=False)``: captum's
    ``LayerGradientXActivation(..., multiply_by_inputs=False)`` with ``Saliency``'s ``abs``.
    """

    def attribute(self, inputs, target=None, abs: bool = True,  # noqa: A002 (captum's name)
                  additional_forward_args=None, attribute_to_layer_input: bool = False):
        """Gradients shaped like the layer's activations (a list of them for a list of layers)."""
        _check_bool("abs", abs)
        grads, _ = self._layer_gradients(inputs, target, additional_forward_args, attribute_to_layer_input)
        return self._format_result([tuple(g.abs() if abs else g for g in values) for values in grads])


class LayerGradientXActivation(_LayerMethod):
    """A layer's activations times the gradient of the target w.r.t. them; captum's arguments.

    ``multiply_by_inputs=False`` returns the gradient alone (as captum does).
    """

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(forward_func, layer, device_ids, dtype=dtype)
        _check_bool("multiply_by_inputs", multiply_by_inputs)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def attribute(self, inputs, target=None, additional_forward_args=None, attribute_to_layer_input: bool = False,
                  grad_kwargs=None):
        """``activation * gradient`` shaped like the layer's activations (a list for a list of layers).
        ``grad_kwargs``: extra keyword arguments of ``torch.autograd.grad`` (captum's)."""
        grads, acts = self._layer_gradients(inputs, target, additional_forward_args, attribute_to_layer_input,
                                            grad_kwargs)
        if not self._multiply_by_inputs:
            return self._format_result(grads)
        return self._format_result([tuple(g * a for g, a in zip(gs, As)) for gs, As in zip(grads, acts)])


def _chunk_inputs(target: _common.Target, args, examples: torch.Tensor | None, n_points: int):
    """The target and the additional args of a chunk of ``n_points`` path points of ``examples``."""
    chunk_target = target if examples is None else target.subset(examples)
    chunk_args = args if examples is None else _common.select_args(args, examples)
    return chunk_target, _common.repeat_args(chunk_args, n_points)


def recorded_gradient_function(layers: LayerSet, forward_func, target, args, dtype, like: Activations,
                               grad_kwargs: dict | None = None) -> GradientFn:
    """Gradient function over *input* points: the gradients at every layer's activations there
    (path ``"inputs"``), cast to the dtypes of ``like`` (the accumulation's activations)."""

    def gradients(points, n_points, examples):
        chunk_target, chunk_args = _chunk_inputs(target, args, examples, n_points)
        grads, _ = layers.gradients(forward_func, points, chunk_target, chunk_args, dtype, grad_kwargs)
        return tuple(g.to(a.dtype) for g, a in zip(flatten(grads), flatten(like)))

    return gradients


def replaced_gradient_function(layers: LayerSet, forward_func, inputs, target, args, dtype,
                               like: Activations, grad_kwargs: dict | None = None) -> GradientFn:
    """Gradient function over *activation* points (flattened over the layers): a forward on the
    inputs with the layers' activations replaced by the points (path ``"layer"``)."""

    def gradients(points, n_points, examples):
        chunk_target, chunk_args = _chunk_inputs(target, args, examples, n_points)
        xs = inputs if examples is None else _common.select_args(inputs, examples)
        grads = layers.replaced_gradients(
            forward_func, _common.repeat_args(xs, n_points), nest(points, like), chunk_target, chunk_args, dtype,
            grad_kwargs,
        )
        return flatten(grads)

    return gradients


class LayerIntegratedGradients(_LayerMethod):
    """Integrated Gradients w.r.t. a layer's activations, with captum's arguments.

    ``LayerIntegratedGradients(forward_func, layer, device_ids=None, multiply_by_inputs=True,
    dtype=None).attribute(inputs, baselines=None, target=None, additional_forward_args=None,
    n_steps=50, method="gausslegendre", internal_batch_size=None, return_convergence_delta=False,
    attribute_to_layer_input=False, path="layer")`` returns what captum's does (within float32
    rounding) for ``path="layer"``; ``path="inputs"`` is the shared-pass variant of the module
    docstring. Quadrature rules, ``internal_batch_size`` chunking and ``dtype`` are as in
    :class:`~saliency_fast.IntegratedGradients`; ``n_steps="auto"`` (with ``rtol``, ``atol``,
    ``min_steps``, ``max_steps``) needs ``path="layer"``, where completeness is the stopping test.

    With several layers and ``path="layer"``, every layer's activations are replaced at once (as
    captum does; the layers must not feed each other). With ``path="inputs"`` the layers may be
    any modules: each result is the layer's own.

    The delta (``return_convergence_delta=True``) is captum's: the sum of every attribution over
    every layer minus ``F(inputs) - F(baselines)``. ``last_layer_deltas`` (``[n_layers,
    n_examples]``) holds each layer's own sum minus that change, whenever the change was computed.
    """

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(forward_func, layer, device_ids, dtype=dtype)
        self.ig = IntegratedGradients(forward_func, multiply_by_inputs, dtype=dtype)
        self.last_n_steps: torch.Tensor | None = None
        self.last_convergence_delta: torch.Tensor | None = None
        self.last_layer_deltas: torch.Tensor | None = None

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.ig.multiplies_by_inputs

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
        attribute_to_layer_input: bool = False,
        grad_kwargs=None,
        *,
        path: str = "layer",
        rtol: float = 0.01,
        atol: float = 0.0,
        min_steps: int = 3,
        max_steps: int = 127,
        show_progress: bool = False,
    ):
        """Attributions shaped like the layer's activations (a list for a list of layers), and with
        ``return_convergence_delta=True`` the per-example delta. ``grad_kwargs``: extra keyword
        arguments of ``torch.autograd.grad`` (captum's). Integer inputs (token ids into an embedding
        layer) need ``path="layer"``: only the activations move along it."""
        inputs, is_tuple, target, args = self._prepare(inputs, target, additional_forward_args)
        grad_kwargs = check_grad_kwargs(grad_kwargs)
        baselines = _common.format_baselines(baselines, inputs, is_tuple)
        _common.check_positive_int("internal_batch_size", internal_batch_size, allow_none=True)
        _check_bool("return_convergence_delta", return_convergence_delta)
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if path == "inputs" and not all(x.is_floating_point() for x in inputs):
            raise TypeError(
                "path='inputs' interpolates the inputs, which must then be floating point; with integer inputs "
                f"(dtypes {sorted({str(x.dtype) for x in inputs})}, e.g. token ids) use path='layer'"
            )
        layers = self.layer_set(attribute_to_layer_input)
        auto = isinstance(n_steps, str)
        if auto:
            levels = self._auto_levels(n_steps, method, path, rtol, atol, min_steps, max_steps)
        else:
            alphas, weights = quadrature.nodes_and_weights(method, n_steps)
        if path == "layer" and len(self.modules) > 1:
            warnings.warn("path='layer' with several layers replaces all their activations at once (as captum "
                          "does): the layers must not feed each other; path='inputs' attributes each on its own",
                          stacklevel=2)
        n_examples = inputs[0].shape[0]
        forward = self.forward_func
        with _common.gradient_mode(forward, keep=tuple(self.modules)), tqdm(
            total=None if auto else n_steps * n_examples, disable=not show_progress, unit="row",
            desc="layer integrated gradients",
        ) as progress:
            at_inputs = layers.activations(forward, inputs, args)
            at_baselines = layers.activations(forward, baselines, args)
            ends = (flatten(at_inputs), flatten(at_baselines))
            change = None
            if auto or return_convergence_delta:
                change = self.ig._total_change(inputs, baselines, target, args)
            if path == "layer":
                gradient_fn = replaced_gradient_function(layers, forward, inputs, target, args, self.dtype, at_inputs,
                                                         grad_kwargs)
                path_inputs, path_baselines, accumulate_at = ends[0], ends[1], None
            else:
                gradient_fn = recorded_gradient_function(layers, forward, target, args, self.dtype, at_inputs,
                                                         grad_kwargs)
                path_inputs, path_baselines, accumulate_at = inputs, baselines, ends
            if auto:
                found = integrate_path_adaptive(
                    gradient_fn, path_inputs, path_baselines, change, levels, rtol=rtol, atol=atol,
                    internal_batch_size=internal_batch_size, multiply_by_inputs=self.multiplies_by_inputs,
                    progress=progress,
                )
                attributions, self.last_n_steps = found.attributions, found.n_steps
                _warn_unconverged(found, rtol, atol, max_steps)
            else:
                attributions = integrate_path(
                    gradient_fn, path_inputs, path_baselines, alphas, weights,
                    steps_per_chunk(internal_batch_size, n_examples), multiply_by_inputs=self.multiplies_by_inputs,
                    progress=progress, ends=accumulate_at,
                )
                self.last_n_steps = torch.full((n_examples,), n_steps, dtype=torch.long, device=inputs[0].device)
        per_layer = nest(attributions, at_inputs)
        for label, values in zip(layers.labels, per_layer):
            for value in values:
                _common.check_finite(f"the layer integrated gradients of {label}", value,
                                     " (the forward function has NaN/inf gradients on the path)")
        delta = self._deltas(per_layer, at_inputs, at_baselines, change)
        result = self._format_result(
            [tuple(a.to(x.dtype) for a, x in zip(values, xs)) for values, xs in zip(per_layer, at_inputs)]
        )
        return (result, delta) if return_convergence_delta else result

    def _auto_levels(self, n_steps, method, path, rtol, atol, min_steps, max_steps):
        if n_steps != "auto":
            raise ValueError(f"n_steps must be a positive int or 'auto', got {n_steps!r}")
        if path != "layer":
            raise ValueError("n_steps='auto' stops on completeness, which is exact only for path='layer'; "
                             "give an int n_steps for path='inputs'")
        if method != "gausslegendre":
            raise ValueError(f"n_steps='auto' uses nested Gauss-Kronrod-Patterson rules: method must be "
                             f"'gausslegendre', got {method!r}")
        _check_tolerance("rtol", rtol)
        _check_tolerance("atol", atol)
        return quadrature.nested_levels(min_steps, max_steps)

    def _deltas(self, per_layer, at_inputs, at_baselines, change) -> torch.Tensor | None:
        """captum's delta (all layers summed), keeping each layer's own in ``last_layer_deltas``."""
        if change is None:
            self.last_convergence_delta = self.last_layer_deltas = None
            return None
        sums = torch.stack([
            completeness_sums(values, xs, bs, self.multiplies_by_inputs)
            for values, xs, bs in zip(per_layer, at_inputs, at_baselines)
        ])
        self.last_layer_deltas = sums - change
        self.last_convergence_delta = sums.sum(0) - change
        return self.last_convergence_delta

