"""Per-example gradients of a model's loss with respect to chosen layers' parameters.

Linear layers take the fast route: one batched forward and backward, the layer's input
activations and output gradients caught by hooks, and each example's weight gradient
``sum_t g_t^T a_t`` (optionally projected, ``sum_t (g_t P_out)^T (a_t P_in)``) computed by the
native op :func:`saliency_fast.ops.per_example_linear_grad`, so no ``d_out x d_in`` gradient is
built when projecting. Any other layer falls back to one autograd call per example.

Loss conventions are captum's: a loss with ``reduction="sum"`` or ``"mean"`` reduces the
per-example losses of a batch (a mean is scaled back by the batch size), and a loss without
reduction returns one loss per example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from saliency_fast import ops

REDUCTIONS = ("sum", "mean", "none")


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for each name in ``layers``, or every module that owns parameters
    directly when ``layers`` is None. Unknown names raise ``ValueError`` listing the known ones."""
    modules = dict(model.named_modules())
    if layers is None:
        return [(name, m) for name, m in modules.items() if any(True for _ in m.parameters(recurse=False))]
    if isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise TypeError(f"layers must be a list of module names (str), got {layers!r}")
    if len(layers) == 0:
        raise ValueError("layers must name at least one module, got an empty list")
    unknown = [name for name in layers if name not in modules]
    if unknown:
        known = ", ".join(repr(n) for n in list(modules)[1:30])
        raise ValueError(f"layers: no module named {unknown[0]!r} in the model; known names include {known}")
    return [(name, modules[name]) for name in layers]


def layer_parameters(layers: Sequence[tuple[str, nn.Module]]) -> list[nn.Parameter]:
    """The parameters whose gradients are taken (own parameters of each layer, in order); they
    are made to require grad, as captum does."""
    params = []
    for _, module in layers:
        for param in module.parameters(recurse=not _owns_parameters(module)):
            param.requires_grad_(True)
            params.append(param)
    return params


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def per_example_losses(loss_fn: Callable, reduction: str, outputs: torch.Tensor, targets) -> torch.Tensor:
    """A scalar whose gradient with respect to each example's output is that example's loss
    gradient: the sum of per-example losses (a mean reduction is scaled back by the batch)."""
    loss = loss_fn(outputs, targets)
    if reduction == "mean":
        return loss * outputs.shape[0]
    return loss.sum()


class _LinearCapture:
    """A forward hook that keeps a Linear layer's input activations and output, so that the
    output's gradient can be asked of autograd directly (no weight gradient is computed)."""

    def __init__(self, module: nn.Linear):
        self.activations: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.output_grads: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output):
        self.activations = inputs[0].detach()
        self.output = output if output.requires_grad else None

    def remove(self):
        self._handle.remove()

    def as_sequences(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, g = self.activations, self.output_grads
        return a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])


def capture_output_grads(
    model: nn.Module,
    named_modules: Sequence[tuple[str, nn.Linear]],
    inputs: tuple,
    targets,
    loss_fn: Callable,
    reduction: str,
) -> tuple[list[_LinearCapture], int]:
    """One batched forward and one backward to the Linear layers' outputs: their captured
    activations and output gradients (each example's own loss gradient), and the batch size."""
    captures = [_LinearCapture(module) for _, module in named_modules]
    try:
        layer_parameters(named_modules)
        with torch.enable_grad():
            outputs = model(*inputs)
            n = outputs.shape[0]
            total = per_example_losses(loss_fn, reduction, outputs, targets)
            for (name, _), capture in zip(named_modules, captures):
                if capture.activations is None or capture.output is None:
                    raise RuntimeError(f"layers: {name!r} was not used in the forward pass (no gradient to take)")
            found = torch.autograd.grad(total, [c.output for c in captures], allow_unused=True)
    finally:
        for capture in captures:
            capture.remove()
    for capture, grad in zip(captures, found):
        capture.output_grads = torch.zeros_like(capture.output) if grad is None else grad.detach()
        capture.output = None
    return captures, n


def linear_factors(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    inputs: tuple,
    targets,
    loss_fn: Callable,
    reduction: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per Linear layer, its input activations ``[N, T, d_in]`` and output gradients
    ``[N, T, d_out]`` (each example's own loss gradient) from one batched forward and backward."""
    captures, n = capture_output_grads(model, layers, inputs, targets, loss_fn, reduction)
    return [capture.as_sequences(n) for capture in captures]


def cat_steps(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[N, T, d]`` factors of several batches joined along examples, shorter sequences padded
    with zero positions (which add nothing to any gradient)."""
    steps = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, 0, 0, steps - p.shape[1])) for p in parts])


def factored_dot(a1, g1, a2, g2) -> torch.Tensor:
    """``[N1, N2]`` inner products of two sets of per-example Linear weight gradients given by
    their factors, ``<sum_t g_t^T a_t, sum_s g'_s^T a'_s> = sum_{t,s} (g_t . g'_s)(a_t . a'_s)``,
    without building either gradient."""
    n1, t1, n2, t2 = a1.shape[0], a1.shape[1], a2.shape[0], a2.shape[1]
    dtype = torch.promote_types(a1.dtype, a2.dtype)
    gg = (g1.reshape(n1 * t1, -1).to(dtype) @ g2.reshape(n2 * t2, -1).to(dtype).T).view(n1, t1, n2, t2)
    aa = (a1.reshape(n1 * t1, -1).to(dtype) @ a2.reshape(n2 * t2, -1).to(dtype).T).view(n1, t1, n2, t2)
    return (gg * aa).sum((1, 3))


def factored_is_cheaper(t1: int, t2: int, d_in: int, d_out: int) -> bool:
    """Whether the factored dot product costs fewer multiplications per pair than building the
    ``d_out x d_in`` gradients and taking their dot product."""
    return t1 * t2 * (d_in + d_out) < d_in * d_out


def looped_gradients(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    inputs: tuple,
    targets,
    loss_fn: Callable,
    reduction: str,
) -> list[torch.Tensor]:
    """Per-example gradients of any layers: one batched forward, one autograd call per example."""
    params = layer_parameters(layers)
    with torch.enable_grad():
        outputs = model(*inputs)
        n = outputs.shape[0]
        if reduction == "none":
            losses = loss_fn(outputs, targets)
            if losses.dim() != 1 or losses.shape[0] != n:
                raise ValueError(
                    f"loss_fn: a per-example loss must return one loss per example, shape ({n},); "
                    f"got {tuple(losses.shape)}"
                )
        else:
            losses = [per_example_losses(loss_fn, reduction, outputs[i : i + 1], _row(targets, i)) for i in range(n)]
        rows = [
            torch.autograd.grad(losses[i], params, retain_graph=i + 1 < n, allow_unused=True) for i in range(n)
        ]
    return [
        torch.stack([row[j] if row[j] is not None else torch.zeros_like(p) for row in rows]).detach()
        if n
        else p.new_zeros((0, *p.shape))
        for j, p in enumerate(params)
    ]


def _row(targets, i: int):
    return targets[i : i + 1] if isinstance(targets, torch.Tensor) and targets.dim() > 0 else targets


def all_linear(layers: Sequence[tuple[str, nn.Module]]) -> bool:
    return all(isinstance(module, nn.Linear) for _, module in layers)
