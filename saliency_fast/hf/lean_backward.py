"""Model patches that make many backward passes over one forward cheap.

Generation attribution runs one backward per target over a shared forward (``is_grads_batched``,
see :mod:`saliency_fast.hf.causal_pass`), so every elementwise op of the backward is repeated once
per target. Two such costs dominate on CPU (GPT-2-small, 16 targets x 16 points x 31 tokens):

- the MLP activation: transformers' tanh-GELU is eight elementwise ops, and autograd replays all
  of them per target over ``[T, B, L, 4D]``. Its derivative depends only on the forward input, so
  :class:`SavedDerivative` computes it once in the forward (forward-mode AD, one extra pass) and
  each target's backward is a single multiply: about 5 s of a 15.7 s call went to under 1 s.
- attention under bfloat16: the CPU flash-attention backward is slow in bf16, and is replayed per
  target; the math backend's matmuls use the bf16 units (7.4 s -> 4.3 s for the whole call).

The patched model computes the same function and the same derivatives (to rounding).
"""

from __future__ import annotations

import contextlib

import torch
import transformers.activations as hf_activations
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

MATH_ATTENTION_MAX_LENGTH = 1024

# Elementwise activations whose backward is more than one pass (several ops, or a transcendental).
# ReLU-like ones are left alone: their backward is already one masked copy.
_ELEMENTWISE = tuple(
    cls
    for cls in (
        nn.GELU, nn.SiLU, nn.Mish,
        *(getattr(hf_activations, name, None) for name in (
            "GELUActivation", "NewGELUActivation", "FastGELUActivation", "GELUTanh", "AccurateGELUActivation",
            "QuickGELUActivation", "ClippedGELUActivation", "SiLUActivation", "MishActivation", "LaplaceActivation",
            "SqrtSoftplusActivation",
        )),
    )
    if cls is not None
)


class SavedDerivative(torch.autograd.Function):
    """``y = f(x)`` for an elementwise ``f``, with ``f'(x)`` computed in the forward: the backward
    is ``grad * f'(x)``, one multiply however many times it runs. With ``create_graph`` (double
    backward) it differentiates ``f`` itself instead, so higher derivatives stay exact."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: nn.Module) -> torch.Tensor:
        y, derivative = torch.func.jvp(fn, (x,), (torch.ones_like(x),))
        ctx.fn = fn
        ctx.save_for_backward(x, derivative)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, derivative = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return grad * derivative, None
        (grad_x,) = torch.autograd.grad(ctx.fn(x), x, grad, create_graph=True)  # recomputed on x's graph
        return grad_x, None


class _SavedDerivativeActivation(nn.Module):
    """Wraps an activation module; forward-only calls go straight to it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return SavedDerivative.apply(x, self.inner)
        return self.inner(x)


@contextlib.contextmanager
def saved_derivative_activations(model: nn.Module, keep: tuple[nn.Module, ...] = ()):
    """Swap every known elementwise activation module of ``model`` for one with a saved derivative,
    except those in ``keep`` (e.g. attributed layers: their hooks must see a differentiable output);
    the originals are put back on exit (also on error)."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _ELEMENTWISE and not any(child is k for k in keep):
                setattr(parent, name, _SavedDerivativeActivation(child))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


@contextlib.contextmanager
def for_batched_backward(model: nn.Module, device: torch.device, dtype: torch.dtype | None, length: int,
                         keep: tuple[nn.Module, ...] = ()):
    """Everything above for a model about to serve many backward passes per forward over sequences of
    up to ``length`` tokens. The math attention keeps ``L x L`` probabilities per head and layer for
    the backward, so it is only chosen up to :data:`MATH_ATTENTION_MAX_LENGTH` tokens."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(saved_derivative_activations(model, keep))
        half = dtype in (torch.bfloat16, torch.float16)
        if device.type == "cpu" and half and length <= MATH_ATTENTION_MAX_LENGTH:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield
