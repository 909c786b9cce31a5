"""Public ops: the native kernel when it is loaded (and has a kernel for the tensor's device),
else the pure-PyTorch reference in :mod:`saliency_fast.reference`, which is their spec.

Fake (meta) kernels make the native ops traceable by ``torch.compile``; autograd formulas are
written with differentiable torch ops (and the ops themselves), so double backward works.
"""

from __future__ import annotations

import functools

import torch

from saliency_fast import _checks, _native, reference

_forced_backend: str | None = None


def set_backend(name: str) -> None:
    """Force ``"native"`` or ``"reference"`` for this process; ``"auto"`` restores the default."""
    global _forced_backend
    if name not in _native.BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {_native.BACKEND_CHOICES}, got {name!r}")
    if name == "native" and not _native.status().loaded:
        raise RuntimeError(f"native backend requested but unavailable: {_native.status().reason}")
    _forced_backend = None if name == "auto" else name


# The backend choice is a constant to torch.compile (dynamo must not trace the extension loader);
# a compiled function keeps the backend it was traced with.
@torch.compiler.assume_constant_result
def active_backend() -> str:
    if _forced_backend is not None:
        return _forced_backend
    return "native" if _native.status().loaded else "reference"


@torch.compiler.assume_constant_result
def _native_kernel_for(device_type: str) -> bool:
    status = _native.status()
    return status.cuda if device_type == "cuda" else device_type == "cpu" and status.cpu


def _use_native(device: torch.device) -> bool:
    return active_backend() == "native" and _native_kernel_for(device.type)


def _native_op(name: str):
    return getattr(torch.ops.saliency_fast, name).default


def _native_gets(tensors: tuple, ints: tuple = (), strs: tuple = (), kernel: str | None = None) -> bool:
    """Whether the native op runs these arguments. Each backend checks its arguments once: the
    native op in C++ (csrc/include/saliency_fast/arg_checks.h), the reference with
    :mod:`saliency_fast._checks`; the public op adds no check of its own. Arguments the native op
    cannot even receive (not tensors, tensors on several devices, a count that is not an int) go
    to the reference, whose checks name them. ``kernel``: also require this build to have the op's
    kernel for the device (an older build may predate the DIG and influence ops)."""
    present = [t for t in tensors if t is not None]
    if not all(isinstance(t, torch.Tensor) for t in present):
        return False
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ints) or not all(isinstance(v, str) for v in strs):
        return False
    device = present[0].device
    if any(t.device != device for t in present) or not _use_native(device):
        return False
    return kernel is None or _has_kernel(kernel, "CUDA" if device.type == "cuda" else "CPU")


def ig_interpolate(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, *,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[k] = baseline + alphas[k] * (x - baseline)``; see :func:`reference.ig_interpolate`.

    ``out``: a contiguous buffer of shape ``(len(alphas), *x.shape)`` and ``x``'s dtype to write
    into and return, so repeated calls reuse one buffer instead of touching fresh memory each time
    (not differentiable, as ``out=`` forms of torch ops are not).
    """
    if out is None:
        if _native_gets((x, baseline, alphas)):
            return _native_op("ig_interpolate")(x, baseline, alphas)
        return reference.ig_interpolate(x, baseline, alphas)
    if torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (out, x, baseline, alphas)):
        raise RuntimeError("ig_interpolate(..., out=) is not differentiable; call it without out instead")
    if _native_gets((x, baseline, alphas, out)):
        _native_op("ig_interpolate_out")(x, baseline, alphas, out)
        return out
    result = reference.ig_interpolate(x, baseline, alphas)
    _checks.check_interpolate_out(out, x, alphas)  # the reference writes a new tensor: the buffer is checked here
    return out.copy_(result)


def ig_accumulate(
    grads: torch.Tensor,
    weights: torch.Tensor,
    x: torch.Tensor,
    baseline: torch.Tensor,
    reduce: str = "none",
    partial: torch.Tensor | None = None,
) -> torch.Tensor:
    """``reduce(partial + (x - baseline) * sum_k weights[k] * grads[k])`` in one pass over ``grads``;
    see :func:`reference.ig_accumulate`."""
    if _native_gets((grads, weights, x, baseline, partial), strs=(reduce,)):
        return _native_op("ig_accumulate")(grads, weights, x, baseline, reduce, partial)
    return reference.ig_accumulate(grads, weights, x, baseline, reduce, partial)


def ig_accumulate_(
    acc: torch.Tensor, grads: torch.Tensor, weights: torch.Tensor, x: torch.Tensor, baseline: torch.Tensor
) -> torch.Tensor:
    """In place: ``acc += (x - baseline) * sum_k weights[k] * grads[k]``; returns ``acc``.

    The buffer form of :func:`ig_accumulate` for chunked steps under ``torch.no_grad``: no
    allocation per chunk. ``acc`` may be float32 for half-precision inputs. Not differentiable
    (use :func:`ig_accumulate` with ``partial`` when gradients must flow).
    """
    if torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (acc, grads, weights, x, baseline)):
        raise RuntimeError("ig_accumulate_ is not differentiable; use ig_accumulate(..., partial=acc) instead")
    if _native_gets((acc, grads, weights, x, baseline)):
        _native_op("ig_accumulate_")(acc, grads, weights, x, baseline)
    else:
        _checks.check_accumulate_args(grads, weights, x, baseline, "none", acc, partial_name="acc")
        acc.copy_(reference.ig_accumulate(grads, weights, x, baseline, "none", acc))
    return acc


# ---------------------------------------------------------------------------------------------
# Registration of fake kernels and autograd for the native ops (only when they are loaded).


def _register_native() -> None:
    lib = f"{_native.OP_NAMESPACE}::"

    @torch.library.register_fake(lib + "ig_interpolate")
    def _(x, baseline, alphas):
        return x.new_empty((alphas.shape[0], *x.shape))

    @torch.library.register_fake(lib + "ig_interpolate_out")
    def _(x, baseline, alphas, out):
        return None

    @torch.library.register_fake(lib + "ig_accumulate")
    def _(grads, weights, x, baseline, reduce, partial=None):
        shape = x.shape if reduce == "none" else x.shape[:-1]
        return x.new_empty(shape, dtype=partial.dtype if partial is not None else x.dtype)

    @torch.library.register_fake(lib + "ig_accumulate_")
    def _(acc, grads, weights, x, baseline):
        return None

    torch.library.register_autograd(
        lib + "ig_interpolate", _interpolate_backward, setup_context=_interpolate_setup
    )
    torch.library.register_autograd(
        lib + "ig_accumulate", _accumulate_backward, setup_context=_accumulate_setup
    )


def _interpolate_setup(ctx, inputs, output):
    x, baseline, alphas = inputs
    ctx.save_for_backward(x, baseline, alphas)


def _interpolate_backward(ctx, grad_out):
    x, baseline, alphas = ctx.saved_tensors
    acc = reference.opmath_dtype(x.dtype)
    g = grad_out.to(acc)
    a = alphas.to(acc)
    grad_x = torch.tensordot(a, g, dims=1)
    grad_b = g.sum(0) - grad_x
    grad_alphas = None
    if ctx.needs_input_grad[2]:
        grad_alphas = (g * (x - baseline).to(acc)).flatten(1).sum(1).to(alphas.dtype)
    return grad_x.to(x.dtype), grad_b.to(baseline.dtype), grad_alphas


def _accumulate_setup(ctx, inputs, output):
    grads, weights, x, baseline, reduce, partial = inputs
    ctx.reduce = reduce
    ctx.has_partial = partial is not None
    ctx.save_for_backward(grads, weights, x, baseline, partial)


def _accumulate_backward(ctx, grad_out):
    grads, weights, x, baseline, partial = ctx.saved_tensors
    acc = reference.opmath_dtype(x.dtype)
    grad_total = _reduce_backward(grad_out.to(acc), ctx.reduce, lambda: ig_accumulate(
        grads, weights, x, baseline, "none", partial).to(acc), x.shape)
    diff = (x - baseline).to(acc)
    weighted = torch.tensordot(weights.to(acc), grads.to(acc), dims=1)
    w_shape = (-1,) + (1,) * x.dim()
    grad_grads = (weights.to(acc).reshape(w_shape) * (diff * grad_total)).to(grads.dtype)
    grad_weights = (grads.to(acc) * (diff * grad_total)).flatten(1).sum(1).to(weights.dtype)
    grad_x = (weighted * grad_total).to(x.dtype)
    grad_partial = grad_total.to(partial.dtype) if ctx.has_partial else None
    return grad_grads, grad_weights, grad_x, -grad_x.to(baseline.dtype), None, grad_partial


def _reduce_backward(grad_out, reduce, unreduced, shape):
    """d reduce(total) / d total applied to ``grad_out``; ``unreduced()`` recomputes ``total``
    (differentiably, for double backward) only for the reductions that need it."""
    if reduce == "none":
        return grad_out
    if reduce == "sum":
        return grad_out.unsqueeze(-1).expand(shape)
    total = unreduced()
    if reduce == "abs_sum":
        return grad_out.unsqueeze(-1) * torch.sign(total)
    norm = torch.linalg.vector_norm(total, dim=-1, keepdim=True)  # l2: d||t|| = t / ||t||, 0 at t = 0
    return torch.where(norm > 0, grad_out.unsqueeze(-1) * total / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0)


if _native.status().loaded:
    _register_native()


# ---------------------------------------------------------------------------------------------
# Discretized Integrated Gradients ops (specification: the dig_* functions in reference.py).
# Scoring and selection are discrete decisions, not differentiable: their outputs never carry
# gradients, on either backend. dig_monotonize is differentiable (piecewise linear).


@functools.cache
def _has_kernel(name: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{_native.OP_NAMESPACE}::{name}", dispatch_key)


def dig_monotonize(anchor: torch.Tensor, current: torch.Tensor, baseline: torch.Tensor, steps: int) -> torch.Tensor:
    """DIG's monotonization of ``anchor`` between ``current`` and ``baseline``; see
    :func:`reference.dig_monotonize`."""
    if _native_gets((anchor, current, baseline), ints=(steps,), kernel="dig_monotonize"):
        return _native_op("dig_monotonize")(anchor, current, baseline, steps)
    return reference.dig_monotonize(anchor, current, baseline, steps)


@torch.no_grad()
def dig_monotonic_scores(
    candidates: torch.Tensor, current: torch.Tensor, baseline: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per candidate anchor: (monotonic dim count, correction norm); see
    :func:`reference.dig_monotonic_scores`."""
    if _native_gets((candidates, current, baseline), ints=(steps,), kernel="dig_monotonic_scores"):
        return tuple(_native_op("dig_monotonic_scores")(candidates, current, baseline, steps))
    return reference.dig_monotonic_scores(candidates, current, baseline, steps)


@torch.no_grad()
def dig_select_anchor(
    candidates: torch.Tensor,
    valid: torch.Tensor,
    current: torch.Tensor,
    baseline: torch.Tensor,
    steps: int,
    strategy: str,
    anchor_word: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused DIG step for a batch of tokens: (choice, monotonized choice); see
    :func:`reference.dig_select_anchor`."""
    if _native_gets((candidates, valid, current, baseline, anchor_word), ints=(steps,), strs=(strategy,),
                    kernel="dig_select_anchor"):
        return tuple(
            _native_op("dig_select_anchor")(candidates, valid, current, baseline, steps, strategy, anchor_word)
        )
    return reference.dig_select_anchor(candidates, valid, current, baseline, steps, strategy, anchor_word)


@torch.no_grad()
def dig_exact_distances(embedding: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Exact float64 squared distances from each query to its candidate rows of ``embedding``; see
    :func:`reference.dig_exact_distances`."""
    if _native_gets((embedding, queries, candidates), kernel="dig_exact_distances"):
        return _native_op("dig_exact_distances")(embedding, queries, candidates)
    return reference.dig_exact_distances(embedding, queries, candidates)


def _register_dig_native() -> None:
    lib = f"{_native.OP_NAMESPACE}::"
    if not hasattr(torch.ops.saliency_fast, "dig_exact_distances"):
        return

    @torch.library.register_fake(lib + "dig_exact_distances")
    def _(embedding, queries, candidates):
        return embedding.new_empty(candidates.shape, dtype=torch.float64)

    @torch.library.register_fake(lib + "dig_monotonize")
    def _(anchor, current, baseline, steps):
        return torch.empty_like(anchor, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "dig_monotonic_scores")
    def _(candidates, current, baseline, steps):
        shape = candidates.shape[:2]
        return (
            candidates.new_empty(shape, dtype=torch.long),
            candidates.new_empty(shape, dtype=torch.float64),
        )

    @torch.library.register_fake(lib + "dig_select_anchor")
    def _(candidates, valid, current, baseline, steps, strategy, anchor_word=None):
        return candidates.new_empty(candidates.shape[:1], dtype=torch.long), candidates.new_empty(current.shape)

    torch.library.register_autograd(lib + "dig_monotonize", _monotonize_backward, setup_context=_monotonize_setup)


def _monotonize_setup(ctx, inputs, output):
    anchor, current, baseline, steps = inputs
    ctx.steps = steps
    ctx.save_for_backward(anchor, current, baseline)


def _monotonize_backward(ctx, grad_out):
    # monotonic dims pass the anchor through; the others are current - (current - baseline) / steps
    anchor, current, baseline = ctx.saved_tensors
    kept = reference.dig_monotonic_mask(anchor, current, baseline)
    inv = 1.0 / ctx.steps
    zero = torch.zeros_like(grad_out)
    return (
        torch.where(kept, grad_out, zero),
        torch.where(kept, zero, grad_out * (1.0 - inv)),
        torch.where(kept, zero, grad_out * inv),
        None,
    )


if _native.status().loaded:
    _register_dig_native()


# ---------------------------------------------------------------------------------------------
# Influence: per-example Linear-layer gradients. Autograd-free: influence uses gradients as data.


@torch.no_grad()
def per_example_linear_grad(
    activations: torch.Tensor,
    output_grads: torch.Tensor,
    in_projection: torch.Tensor | None = None,
    out_projection: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each example's (projected) Linear weight gradient ``sum_t (g_t P_out)^T (a_t P_in)``,
    ``[N, k_out, k_in]`` in the accumulation dtype; see :func:`reference.per_example_linear_grad`.
    Not differentiable."""
    if _native_gets((activations, output_grads, in_projection, out_projection), kernel="per_example_linear_grad"):
        return _native_op("per_example_linear_grad")(activations, output_grads, in_projection, out_projection)
    return reference.per_example_linear_grad(activations, output_grads, in_projection, out_projection)


def _register_influence_native() -> None:
    if not hasattr(torch.ops.saliency_fast, "per_example_linear_grad"):
        return

    @torch.library.register_fake(f"{_native.OP_NAMESPACE}::per_example_linear_grad")
    def _(activations, output_grads, in_projection=None, out_projection=None):
        k_in = activations.shape[2] if in_projection is None else in_projection.shape[1]
        k_out = output_grads.shape[2] if out_projection is None else out_projection.shape[1]
        dtype = reference.opmath_dtype(activations.dtype)
        return activations.new_empty((activations.shape[0], k_out, k_in), dtype=dtype)


if _native.status().loaded:
    _register_influence_native()
