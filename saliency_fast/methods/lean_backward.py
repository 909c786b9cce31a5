"""Model patches that make the backward passes of attribution cheap.

Attribution differentiates the same forward many times: once per target in generation (one
backward per generated token over a shared forward, ``is_grads_batched``), once per path point in
IG and DIG. Two costs dominate on CPU, and both are fixed here without changing what is computed:

- the MLP activation: transformers' tanh-GELU is eight elementwise ops, and autograd replays all of
  them in every backward, per target. Its derivative depends only on the forward input, so
  :class:`SavedDerivative` computes it once in the forward with PyTorch's fused single-pass ops
  (``gelu`` and ``gelu_backward`` with a unit gradient; likewise SiLU and Mish) and the backward is
  a single multiply. GPT-2-small generation IG, 16 targets x 16 points x 31 tokens: about 5 s of
  a 15.7 s call went to under 1 s; DIG on a 12-layer GPT-2 of width 384: 3.5 s -> 2.8 s a call.
- attention on CPU: in bf16/fp16 the flash-attention backward is several times slower than the
  math attention, whose batched matmuls run on the bf16 units (two BERT-base layers, 40 x 64
  tokens, one thread: 0.9 s vs 0.55 s per forward + backward; generation IG above: 7.4 s vs
  4.3 s); and a backward batched over targets replays the flash backward target by target.

The patched model computes the same function and the same derivatives (to rounding), higher ones
included.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
import transformers.activations as hf_activations
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclasses.dataclass(frozen=True)
class _Fused:
    """One elementwise activation as two single-pass native ops: its value and its derivative."""

    value: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]


def _ones(x: torch.Tensor) -> torch.Tensor:
    return x.new_ones(()).expand_as(x)  # a broadcast 1, never materialised


def _gelu(approximate: str) -> _Fused:
    return _Fused(lambda x: F.gelu(x, approximate=approximate),
                  lambda x: torch.ops.aten.gelu_backward(_ones(x), x, approximate=approximate))


_SILU = _Fused(F.silu, lambda x: torch.ops.aten.silu_backward(_ones(x), x))
_MISH = _Fused(F.mish, lambda x: torch.ops.aten.mish_backward(_ones(x), x))
# activation classes -> their fused pair (the same function: transformers' tanh-GELUs are the
# tanh approximation written out in Python, eight ops forward and more backward)
_FUSED_BY_CLASS = {
    **{getattr(hf_activations, name): _gelu("tanh")
       for name in ("NewGELUActivation", "FastGELUActivation", "GELUTanh") if hasattr(hf_activations, name)},
    hf_activations.GELUActivation: _gelu("none"),
    hf_activations.SiLUActivation: _SILU, nn.SiLU: _SILU,
    hf_activations.MishActivation: _MISH, nn.Mish: _MISH,
}


def _fused(module: nn.Module) -> _Fused | None:
    if type(module) is nn.GELU:
        return _gelu(module.approximate)
    return _FUSED_BY_CLASS.get(type(module))


class SavedDerivative(torch.autograd.Function):
    """``y = f(x)`` for an elementwise ``f``, with ``f'(x)`` computed in the forward (one native
    pass): the backward is ``grad * f'(x)``, one multiply however many times it runs. With
    ``create_graph`` (double backward) it differentiates the module itself, so higher derivatives
    stay exact."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module, fused: _Fused) -> torch.Tensor:
        ctx.module = module
        ctx.save_for_backward(x, fused.derivative(x))
        return fused.value(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, derivative = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return grad * derivative, None, None
        (grad_x,) = torch.autograd.grad(ctx.module(x), x, grad, create_graph=True)  # recomputed on x's graph
        return grad_x, None, None


class _SavedDerivativeActivation(nn.Module):
    """Wraps an activation module; forward-only calls go straight to it."""

    def __init__(self, inner: nn.Module, fused: _Fused):
        super().__init__()
        self.inner = inner
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return SavedDerivative.apply(x, self.inner, self.fused)
        return self.inner(x)


@contextlib.contextmanager
def saved_derivative_activations(model: nn.Module, keep: tuple[nn.Module, ...] = ()):
    """Swap every known elementwise activation module of ``model`` for one with a saved derivative,
    except those in ``keep`` (e.g. attributed layers: their hooks must see a differentiable output);
    the originals are put back on exit (also on error)."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            fused = _fused(child)
            if fused is not None and not any(child is k for k in keep):
                setattr(parent, name, _SavedDerivativeActivation(child, fused))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


# Math attention holds rows x heads x L x L scores: chosen only while rows x L x L stays below this.
MATH_ATTENTION_MAX_SCORES = 2**20


def attention_kernel(dtype: torch.dtype | None, device: torch.device, rows: int, length: int,
                     batched: bool = False):
    """The scaled-dot-product-attention kernel for gradient passes over ``rows`` sequences of
    ``length`` tokens, on CPU: the math attention for short sequences in bf16/fp16 autocast, and
    at any precision when the backward is ``batched`` over targets (``is_grads_batched``: vmap has
    no batching rule for the flash backward and replays it target by target, then stacks);
    else PyTorch's default."""
    if device.type != "cpu" or (dtype is None and not batched) or rows * length**2 > MATH_ATTENTION_MAX_SCORES:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
