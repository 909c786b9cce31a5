"""Argument validation of the reference ops (:mod:`saliency_fast.reference`) and of the Python-side
arguments of DIG's path building. The native ops check their own arguments, with the same
exceptions and the same argument names (csrc/include/saliency_fast/arg_checks.h); the public ops in
:mod:`saliency_fast.ops` add no check, so each call is checked once, by the backend that runs it.

Each check raises ``TypeError`` for a wrong kind of thing (dtype, type) and ``ValueError`` for a
wrong value (shape, device, unknown option), with a message that names the argument and says
what was expected, so bad input never reaches a kernel.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
REDUCE_CHOICES = ("none", "sum", "l2", "abs_sum")


def tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating(name: str, value: torch.Tensor) -> None:
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float32, float64, bfloat16, float16), got {value.dtype}"
        )


def same_device(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}; expected the same device")


def same_dtype(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {ref_name} has {ref.dtype}; expected the same dtype")


def same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but {ref_name} has {tuple(ref.shape)}; expected the same shape"
        )


def one_dim(name: str, value: torch.Tensor) -> None:
    if value.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")


def x_and_baseline(x, baseline) -> None:
    tensor("x", x)
    tensor("baseline", baseline)
    floating("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least one dim (the last is the embedding dim), got a scalar")
    same_device("baseline", baseline, "x", x)
    same_dtype("baseline", baseline, "x", x)
    same_shape("baseline", baseline, "x", x)


def check_interpolate_args(x, baseline, alphas) -> None:
    x_and_baseline(x, baseline)
    tensor("alphas", alphas)
    floating("alphas", alphas)
    one_dim("alphas", alphas)
    same_device("alphas", alphas, "x", x)


def check_interpolate_out(out, x, alphas) -> None:
    """``out`` of ``ig_interpolate(..., out=)``: a contiguous buffer of the result's shape and dtype."""
    tensor("out", out)
    same_device("out", out, "x", x)
    same_dtype("out", out, "x", x)
    shape = (alphas.shape[0], *x.shape)
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape (len(alphas), *x.shape) = {shape}, got {tuple(out.shape)}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous (a buffer the op writes in place)")


def check_accumulate_args(grads, weights, x, baseline, reduce, partial, partial_name: str = "partial") -> None:
    x_and_baseline(x, baseline)
    tensor("grads", grads)
    tensor("weights", weights)
    if reduce not in REDUCE_CHOICES:
        raise ValueError(f"reduce must be one of {REDUCE_CHOICES}, got {reduce!r}")
    same_device("grads", grads, "x", x)
    same_dtype("grads", grads, "x", x)
    if tuple(grads.shape[1:]) != tuple(x.shape) or grads.dim() != x.dim() + 1:
        raise ValueError(
            f"grads must have shape (steps, *x.shape) = (m, {', '.join(map(str, x.shape))}), "
            f"got {tuple(grads.shape)}"
        )
    floating("weights", weights)
    one_dim("weights", weights)
    same_device("weights", weights, "x", x)
    if weights.shape[0] != grads.shape[0]:
        raise ValueError(
            f"weights must have one entry per step of grads ({grads.shape[0]}), got {weights.shape[0]}"
        )
    if partial is not None:
        tensor(partial_name, partial)
        same_device(partial_name, partial, "x", x)
        same_shape(partial_name, partial, "x", x)
        accepted = {x.dtype, torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype}
        if partial.dtype not in accepted:
            raise TypeError(
                f"{partial_name} must have dtype {' or '.join(sorted(map(str, accepted)))} (x's dtype or its "
                f"accumulation dtype), got {partial.dtype}"
            )


# ---------------------------------------------------------------------------------------------
# Discretized Integrated Gradients ops (saliency_fast.ops.dig_*).

DIG_STRATEGIES = ("greedy", "maxcount")


def positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def dig_strategy(value) -> None:
    if value not in DIG_STRATEGIES:
        raise ValueError(f"strategy must be one of {DIG_STRATEGIES}, got {value!r}")


def _points(name: str, value, ref_name: str, ref: torch.Tensor) -> None:
    tensor(name, value)
    same_device(name, value, ref_name, ref)
    same_dtype(name, value, ref_name, ref)


def check_dig_monotonize_args(anchor, current, baseline, steps) -> None:
    tensor("anchor", anchor)
    floating("anchor", anchor)
    for name, value in (("current", current), ("baseline", baseline)):
        _points(name, value, "anchor", anchor)
        same_shape(name, value, "anchor", anchor)
    positive_int("steps", steps)


def check_dig_scores_args(candidates, current, baseline, steps) -> None:
    tensor("candidates", candidates)
    floating("candidates", candidates)
    if candidates.dim() != 3:
        raise ValueError(f"candidates must have shape (N, K, D), got {tuple(candidates.shape)}")
    _points("current", current, "candidates", candidates)
    n, _, d = candidates.shape
    if tuple(current.shape) != (n, d):
        raise ValueError(
            f"current must have shape (N, D) = ({n}, {d}) to match candidates, got {tuple(current.shape)}"
        )
    _points("baseline", baseline, "candidates", candidates)
    same_shape("baseline", baseline, "current", current)
    positive_int("steps", steps)


def check_dig_select_args(candidates, valid, current, baseline, steps, strategy, anchor_word) -> None:
    check_dig_scores_args(candidates, current, baseline, steps)
    tensor("valid", valid)
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
    same_device("valid", valid, "candidates", candidates)
    if tuple(valid.shape) != tuple(candidates.shape[:2]):
        raise ValueError(
            f"valid must have shape (N, K) = {tuple(candidates.shape[:2])} to match candidates, "
            f"got {tuple(valid.shape)}"
        )
    dig_strategy(strategy)
    if anchor_word is not None:
        _points("anchor_word", anchor_word, "candidates", candidates)
        same_shape("anchor_word", anchor_word, "current", current)


def check_dig_distances_args(embedding, queries, candidates) -> None:
    tensor("embedding", embedding)
    floating("embedding", embedding)
    if embedding.dim() != 2:
        raise ValueError(f"embedding must have shape (V, D), got {tuple(embedding.shape)}")
    _points("queries", queries, "embedding", embedding)
    if queries.dim() != 2 or queries.shape[1] != embedding.shape[1]:
        raise ValueError(f"queries must have shape (M, D) = (M, {embedding.shape[1]}), got {tuple(queries.shape)}")
    tensor("candidates", candidates)
    if candidates.dtype != torch.int64:
        raise TypeError(f"candidates must be an int64 tensor of row indices, got {candidates.dtype}")
    same_device("candidates", candidates, "embedding", embedding)
    if candidates.dim() != 2 or candidates.shape[0] != queries.shape[0]:
        raise ValueError(
            f"candidates must have shape (M, C) with M = {queries.shape[0]} (one row per query), "
            f"got {tuple(candidates.shape)}"
        )
    if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= embedding.shape[0]):
        raise ValueError(f"candidates must hold row indices of embedding, in [0, {embedding.shape[0]})")


# ---------------------------------------------------------------------------------------------
# Influence: per-example Linear-layer gradients.


def check_per_example_linear_grad_args(activations, output_grads, in_projection, out_projection) -> None:
    tensor("activations", activations)
    floating("activations", activations)
    if activations.dim() != 3:
        raise ValueError(f"activations must have shape (N, T, d_in), got {tuple(activations.shape)}")
    tensor("output_grads", output_grads)
    same_device("output_grads", output_grads, "activations", activations)
    same_dtype("output_grads", output_grads, "activations", activations)
    if output_grads.dim() != 3 or output_grads.shape[:2] != activations.shape[:2]:
        raise ValueError(
            f"output_grads must have shape (N, T, d_out) = ({activations.shape[0]}, {activations.shape[1]}, d_out), "
            f"got {tuple(output_grads.shape)}"
        )
    for name, projection, source in (
        ("in_projection", in_projection, activations),
        ("out_projection", out_projection, output_grads),
    ):
        if projection is None:
            continue
        tensor(name, projection)
        same_device(name, projection, "activations", activations)
        same_dtype(name, projection, "activations", activations)
        if projection.dim() != 2 or projection.shape[0] != source.shape[2]:
            raise ValueError(f"{name} must have shape ({source.shape[2]}, k), got {tuple(projection.shape)}")
