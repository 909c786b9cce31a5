"""DeepLIFT (Shrikumar et al., 2017) with the rescale rule, and DeepLiftShap, with captum's arguments.

The inputs and their baselines go through the model as one batch (inputs first); at each supported
nonlinear module the gradient of the input half is replaced by DeepLIFT's multiplier, and the
attributions are ``(x - b) * multipliers``. Which modules get a rule:

- element-wise activations (``nn.ReLU``, ``ReLU6``, ``LeakyReLU``, ``ELU``, ``CELU``, ``SELU``,
  ``GELU``, ``SiLU``, ``Mish``, ``Sigmoid``, ``Tanh``, ``Softplus``, ``Softsign``, ``Hardtanh``,
  ``Hardsigmoid``, ``Hardswish``, ``LogSigmoid``, and every module of ``transformers.activations``):
  the rescale rule ``Δout / Δin`` per element, the plain gradient where ``|Δin| < eps``;
- ``nn.Softmax``: captum's rule (rescale, then the mean multiplier subtracted);
- ``nn.MaxPool1d/2d/3d``: captum's rule (the change of the max routed to the winning element).

Everything else (linear maps, convolutions, norms, attention's matmuls and functional calls such
as ``torch.relu`` or ``F.softmax`` inside a ``forward``) keeps its plain gradient, as in captum: that
is exact for linear maps and a gradient approximation elsewhere. On Hugging Face transformers this
means the MLP activations get the rescale rule, while layer norms, attention softmax (functional)
and products of activations (gated MLPs, attention scores) are differentiated as they are. A
module called more than once in one forward pass is rejected (its two calls would share one rule).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from saliency_fast.methods import _common, lean_backward, noise_tunnel
from saliency_fast.methods.gradient import GradientAttribution
from saliency_fast.methods.integrated_gradients import IntegratedGradients

ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid,
)
_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}


def rule_of(module: nn.Module) -> str | None:
    """``"rescale"``, ``"softmax"``, ``"maxpool"`` or None (plain gradient) for a module."""
    if (isinstance(module, ELEMENTWISE) or type(module).__module__ == "transformers.activations"
            or lean_backward.activation_pair(module) is not None):  # also our fused wrappers of them
        return "rescale"
    if isinstance(module, nn.Softmax):
        return "softmax"
    if type(module) in _POOLS:
        return "maxpool"
    return None


def _halves_delta(value: torch.Tensor) -> torch.Tensor:
    """``input half - reference half``, for both halves."""
    first, second = value.detach().chunk(2)
    return torch.cat([first - second] * 2)


def _rescale(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``y`` whose gradient w.r.t. ``x`` is ``Δy / Δx`` where ``|Δx| >= eps`` (both halves, as captum),
    and the module's own gradient elsewhere."""
    dx, dy = _halves_delta(x), _halves_delta(y)
    small = dx.abs() < eps
    ratio = torch.where(small, torch.zeros_like(dy), dy / torch.where(small, torch.ones_like(dx), dx))
    return torch.where(small, y, y.detach() + (x - x.detach()) * ratio)


class _Rule(torch.autograd.Function):
    """``y`` itself forward; a subclass's ``backward`` gives the gradient w.r.t. the module's
    input ``x`` (``setting``: the module's parameter the rule needs)."""

    @staticmethod
    def forward(ctx, x, y, setting, eps):
        ctx.save_for_backward(x.detach(), y.detach())
        ctx.setting, ctx.eps = setting, eps
        return y.detach().clone()


class _SoftmaxRule(_Rule):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        local = y * (grad - (grad * y).sum(ctx.setting, keepdim=True))
        dx, dy = _halves_delta(x), _halves_delta(y)
        small = dx.abs() < ctx.eps
        unnormalized = torch.where(small, local, grad * dy / torch.where(small, torch.ones_like(dx), dx))
        return unnormalized - unnormalized.sum() / unnormalized.numel(), None, None, None


class _MaxPoolRule(_Rule):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        m = ctx.setting
        pool = getattr(F, f"max_pool{_POOLS[type(m)]}d")
        _, index = pool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)

        def unpool(values):  # each output's value added at its winning input element
            flat = torch.zeros_like(x).flatten(2)
            return flat.scatter_add_(2, index.flatten(2), values.flatten(2)).view_as(x)

        y_in, y_ref = y.chunk(2)
        top = torch.maximum(y_in, y_ref)
        routed = unpool(grad * torch.cat([top - y_ref, y_in - top])).chunk(2)
        change = torch.cat([routed[0] + routed[1]] * 2)
        dx = _halves_delta(x)
        small = dx.abs() < ctx.eps
        return torch.where(small, unpool(grad), change / torch.where(small, torch.ones_like(dx), dx)), None, None, None


@contextlib.contextmanager
def deeplift_rules(model: nn.Module, eps: float):
    """DeepLIFT's rules on ``model``'s supported modules for the duration (forward hooks, removed
    after); the batch through the model must be the inputs followed by their references."""
    handles, seen, saved = [], set(), {}

    def before(module, args):
        if module in seen:
            raise RuntimeError(
                f"DeepLift: module {type(module).__name__} is called more than once in one forward pass; give each "
                "call its own module instance"
            )
        seen.add(module)
        saved[module] = args[0]
        if getattr(module, "inplace", False):  # keep our saved input intact
            return (args[0].clone(), *args[1:])
        return None

    def after(module, args, output):
        x, rule = saved.pop(module), rule_of(module)
        if rule == "rescale":
            return _rescale(x, output, eps)
        if rule == "softmax":
            return _SoftmaxRule.apply(x, output, module.dim, eps)
        return _MaxPoolRule.apply(x, output, module, eps)

    for module in model.modules():
        if rule_of(module) is not None:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class DeepLift(GradientAttribution):
    """DeepLIFT's rescale rule, as ``captum.attr.DeepLift(model, multiply_by_inputs=True,
    eps=1e-10)``; see the module docstring for which modules get a rule.
    ``attribute(inputs, baselines=None, target=None, additional_forward_args=None,
    return_convergence_delta=False, custom_attribution_func=None)``;
    ``custom_attribution_func(multipliers, inputs, baselines)`` (tuples) replaces
    ``(x - b) * multipliers``."""

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10, *,
                 dtype: torch.dtype | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (DeepLIFT hooks its modules), got {type(model).__name__}")
        super().__init__(model, dtype=dtype)
        self.model = model
        self._multiply_by_inputs = bool(multiply_by_inputs)
        self.eps = eps

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, custom_attribution_func=None):
        inputs, is_tuple, target_, args = self._prepare(inputs, target, additional_forward_args)
        baselines_ = _common.format_baselines(baselines, inputs, is_tuple)
        n = inputs[0].shape[0]
        paired = tuple(torch.cat([x, b]) for x, b in zip(inputs, baselines_))
        with _common.frozen_parameters(self.model), deeplift_rules(self.model, self.eps):
            grads = _common.input_gradients(self.model, paired, target_, _common.repeat_args(args, 2), self.dtype)
        multipliers = tuple(g[:n] for g in grads)
        if custom_attribution_func is not None:
            attributions = _call_custom(custom_attribution_func, multipliers, inputs, baselines_)
        elif self.multiplies_by_inputs:
            attributions = tuple(m * (x - b) for m, x, b in zip(multipliers, inputs, baselines_))
        else:
            attributions = multipliers
        result = _common.format_output(is_tuple, tuple(attributions))
        if not return_convergence_delta:
            return result
        return result, self.compute_convergence_delta(result, baselines, _common.format_output(is_tuple, inputs),
                                                      target, additional_forward_args)

    # captum's helper, ``sum(attributions) - (F(end_point) - F(start_point))`` per example: the same
    # as for IG (F runs without the rules, under inference mode)
    compute_convergence_delta = IntegratedGradients.compute_convergence_delta
    _total_change = IntegratedGradients._total_change

    def attribute_future(self):
        raise NotImplementedError(f"{type(self).__name__} does not support attribution of future samples.")


def _call_custom(func, multipliers, inputs, baselines) -> tuple:
    out = func(multipliers, inputs, baselines)
    return out if isinstance(out, tuple) else (out,)


class DeepLiftShap(DeepLift):
    """DeepLIFT averaged over a distribution of baselines, as ``captum.attr.DeepLiftShap``: every
    example is paired with every baseline row (all pairs in one forward and backward), and its
    attributions are the mean over the baselines. ``baselines``: tensors of baseline rows (at least
    one), or a function returning them (called with the inputs if it takes an argument). Deltas are
    per pair, ``n_examples * n_baselines`` of them."""

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None,
                  return_convergence_delta: bool = False, custom_attribution_func=None):
        if callable(baselines):
            baselines = baselines(inputs) if inspect.signature(baselines).parameters else baselines()
        formatted, is_tuple = _common.format_inputs(inputs)
        items = baselines if isinstance(baselines, tuple) else (baselines,)
        if len(items) != len(formatted) or not all(isinstance(b, torch.Tensor) and b.dim() > 0 for b in items):
            raise _common.ArgumentError(
                f"baselines must be one tensor of baseline rows per input ({len(formatted)}), or a function returning "
                f"them, got {tuple(type(b).__name__ for b in items)}"
            )
        n, m = formatted[0].shape[0], items[0].shape[0]
        if any(b.shape[0] != m for b in items):
            raise _common.ArgumentError("baselines must all have the same number of rows")
        expanded_inputs = tuple(x.repeat_interleave(m, dim=0) for x in formatted)
        expanded_baselines = tuple(b.repeat(n, *([1] * (b.dim() - 1))) for b in items)
        kwargs = noise_tunnel._expand_kwargs(
            {"target": target, "additional_forward_args": additional_forward_args}, m, n, False, None
        )
        out = super().attribute(
            _common.format_output(is_tuple, expanded_inputs), _common.format_output(is_tuple, expanded_baselines),
            return_convergence_delta=return_convergence_delta, custom_attribution_func=custom_attribution_func,
            **kwargs,
        )
        attributions, delta = out if return_convergence_delta else (out, None)
        attributions = attributions if is_tuple else (attributions,)
        mean = _common.format_output(is_tuple, tuple(a.reshape(n, m, *a.shape[1:]).mean(1) for a in attributions))
        return (mean, delta) if return_convergence_delta else mean
