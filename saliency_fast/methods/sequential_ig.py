"""Sequential Integrated Gradients (Enguehard, 2023, "Sequential Integrated Gradients: a simple but
effective method for explaining language models", Findings of ACL 2023).

Token ``i``'s attribution is IG along a path that moves token ``i`` alone from its baseline (the
paper uses the ``[MASK]`` embedding) to its value while every other token keeps its real value:

    SIG_i = (x_i - b_i) * sum_k w_k * dF/dx_i (x with token i at b_i + alpha_k (x_i - b_i))

so completeness holds per token: ``sum_d SIG_i = F(x) - F(x with token i at b_i)``.

Instead of one IG run per token, every (token, step) pair is one row of a large forward batch:
the path integrator (:func:`~saliency_fast.methods.integrated_gradients.integrate_path`) runs
over the moving token vectors only (``[n_tokens, D]``, so its buffers stay small), and the
forward function writes each interpolated token into a copy of its sequence just before the
model runs. Groups of tokens are sized so that a forward batch holds at most
``internal_batch_size`` sequences.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from saliency_fast import reference
from saliency_fast.methods import _common, quadrature
from saliency_fast.methods.gradient import GradientAttribution
from saliency_fast.methods.integrated_gradients import gradient_function, integrate_path


class SequentialIntegratedGradients(GradientAttribution):
    """Sequential IG over any forward function of token embeddings ``[B, S, D]``.

    ``SequentialIntegratedGradients(forward_func, dtype=None).attribute(inputs, baselines=None,
    target=None, additional_forward_args=None, n_steps=50, method="gausslegendre",
    internal_batch_size=None, return_convergence_delta=False, token_mask=None)``; the arguments
    mean what they mean for :class:`~saliency_fast.IntegratedGradients`, with ``inputs`` one
    tensor whose dim 1 is the token dim. ``baselines`` default to zeros; pass the mask token's
    embedding for the paper's setting. ``token_mask`` (bool ``[B, S]``, default all True) says
    which tokens are attributed; the others (special tokens, padding) get 0 and cost nothing.

    With ``return_convergence_delta=True`` the delta is per token, ``[B, S]``:
    ``sum_d attribution[b, s] - (F(x_b) - F(x_b with token s at its baseline))`` (0 where
    ``token_mask`` is False).
    """

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        *,
        token_mask: torch.Tensor | None = None,
        show_progress: bool = False,
    ):
        if isinstance(inputs, tuple):
            raise TypeError("inputs must be one tensor of token embeddings [batch, tokens, dim], not a tuple")
        inputs, is_tuple, target, args = self._prepare(inputs, target, additional_forward_args)
        x = inputs[0]
        if x.dim() != 3:
            raise ValueError(f"inputs must have shape [batch, tokens, dim], got {tuple(x.shape)}")
        base = _common.format_baselines(baselines, inputs, is_tuple)[0]
        token_mask = _check_token_mask(token_mask, x)
        _common.check_positive_int("internal_batch_size", internal_batch_size, allow_none=True)
        alphas, weights = quadrature.nodes_and_weights(method, n_steps)
        rows, positions = token_mask.nonzero(as_tuple=True)
        n_paths = rows.shape[0]
        # tokens per group and path points per chunk: at most internal_batch_size sequences per forward
        budget = internal_batch_size or n_paths * n_steps
        group = max(1, min(n_paths, budget // n_steps)) if n_paths else 1
        chunk_steps = max(1, min(n_steps, budget // group))
        token_attr = torch.zeros((n_paths, x.shape[2]), dtype=reference.opmath_dtype(x.dtype), device=x.device)
        forward = _TokenForward(self.forward_func)
        with _common.gradient_mode(self.forward_func), tqdm(
            total=n_paths * n_steps, disable=not show_progress, unit="row", desc="sequential integrated gradients",
        ) as progress:
            for start in range(0, n_paths, group):
                span = slice(start, min(start + group, n_paths))
                r, p = rows[span], positions[span]
                group_args = (x[r], p, *(_common.select_args(args, r) or ()))
                gradient_fn = gradient_function(forward, target.subset(r), group_args, self.dtype)
                token_attr[span] = integrate_path(
                    gradient_fn, (x[r, p],), (base[r, p].contiguous(),), alphas, weights, chunk_steps,
                    progress=progress,
                )[0]
        _common.check_finite("the sequential integrated gradients", token_attr,
                             " (the forward function has NaN/inf gradients on the path)")
        attributions = torch.zeros_like(x)
        attributions[rows, positions] = token_attr.to(x.dtype)
        if not return_convergence_delta:
            return attributions
        delta = torch.zeros(token_mask.shape, dtype=token_attr.dtype, device=x.device)
        delta[rows, positions] = token_attr.sum(-1) - self._token_changes(x, base, rows, positions, target, args, budget)
        return attributions, delta

    def _token_changes(self, x, base, rows, positions, target, args, budget: int) -> torch.Tensor:
        """``F(x) - F(x with token s at its baseline)`` for every attributed (row, token)."""
        full = _common.forward_values(self.forward_func, (x,), target, args)
        changes = []
        for start in range(0, rows.shape[0], budget):
            r, p = rows[start : start + budget], positions[start : start + budget]
            copies = x[r].clone()
            copies[torch.arange(r.shape[0], device=x.device), p] = base[r, p]
            changes.append(full[r] - _common.forward_values(self.forward_func, (copies,), target.subset(r),
                                                            _common.select_args(args, r)))
        return torch.cat(changes).to(reference.opmath_dtype(x.dtype)) if changes else full.new_zeros(0)


class _TokenForward:
    """``forward_func`` over sequences rebuilt from one moving token each: row ``j`` is
    ``context[j]`` with ``token[j]`` written at ``position[j]`` (differentiably)."""

    def __init__(self, forward_func):
        self.forward_func = forward_func

    def __call__(self, token, context, position, *args):
        sequences = context.index_put((torch.arange(context.shape[0], device=context.device), position), token)
        return self.forward_func(sequences, *args)


def _check_token_mask(token_mask, x: torch.Tensor) -> torch.Tensor:
    if token_mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool:
        raise TypeError(f"token_mask must be a bool tensor [batch, tokens], got {type(token_mask).__name__}"
                        + (f" of dtype {token_mask.dtype}" if isinstance(token_mask, torch.Tensor) else ""))
    if tuple(token_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"token_mask must have shape {tuple(x.shape[:2])} (batch, tokens), got {tuple(token_mask.shape)}")
    return token_mask.to(x.device)
