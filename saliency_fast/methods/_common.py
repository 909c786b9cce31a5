"""Input, baseline, target and forward-call handling shared by every attribution method.

The conventions are captum's, so a captum user can switch by changing an import:

- ``inputs`` is a tensor or a tuple of tensors sharing the batch size in dim 0 (examples).
- ``baselines`` is None (zeros), a scalar, or per input a tensor shaped like the input, like one
  example (``(1, ...)`` or the input shape without the batch dim) or a scalar.
- ``additional_forward_args`` follow the inputs in the call to ``forward_func``; a tensor with at
  least one dim is per-example (batch dim first) and is repeated with the examples.
- ``target`` picks one scalar per example from the forward output (see :class:`Target`).

Errors name the argument and say what was expected: ``TypeError`` for the wrong kind of thing,
``ValueError`` for a wrong value, and :class:`ArgumentError` (a ``ValueError`` that is also an
``AssertionError``) where captum asserts, so code written for captum still catches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import torch

from saliency_fast.methods import lean_backward

Tensors = tuple[torch.Tensor, ...]

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


class ArgumentError(ValueError, AssertionError):
    """A wrong argument where captum raises ``AssertionError`` (target out of range, a target that
    does not pick one output per example, a bad window or stride, a forward that aggregates the
    batch where it must not): a ``ValueError`` with a message that names the argument, and an
    ``AssertionError`` too, so ``except AssertionError`` written for captum keeps working."""


def _label(name: str, index: int, is_tuple: bool) -> str:
    return f"{name}[{index}]" if is_tuple else name


def input_label(index: int, count: int) -> str:
    """``inputs`` for a lone input, ``inputs[i]`` in a tuple of several."""
    return "inputs" if count == 1 else f"inputs[{index}]"


def check_finite(label: str, value: torch.Tensor, what: str = "") -> None:
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{label} contains NaN or inf{what}")


def format_inputs(inputs, *, require_float: bool = True, same_batch: bool = True) -> tuple[Tensors, bool]:
    """``(inputs as a tuple, whether they came as a tuple)`` after checking them.

    ``require_float``: gradient methods need floating inputs (embed token ids first); perturbation
    methods also accept integer inputs such as token ids. ``same_batch=False`` lets inputs after
    the first have another dim 0 (captum's sparse-feature inputs for perturbation methods: a list
    of ids for the whole batch, ablated as one feature).
    """
    is_tuple = isinstance(inputs, tuple)
    items = inputs if is_tuple else (inputs,)
    if not items:
        raise ValueError("inputs must be a tensor or a non-empty tuple of tensors, got an empty tuple")
    for i, value in enumerate(items):
        label = _label("inputs", i, is_tuple)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(value).__name__}")
        if require_float and not value.is_floating_point():
            raise TypeError(
                f"{label} must have a floating dtype to take gradients, got {value.dtype} "
                "(attribute to embeddings, not token ids)"
            )
        if value.dim() < 1:
            raise ValueError(f"{label} must have a batch dim (dim 0), got a scalar")
        check_finite(label, value)
    first = items[0]
    for i, value in enumerate(items[1:], 1):
        if same_batch and value.shape[0] != first.shape[0]:
            raise ValueError(
                f"inputs must share the batch size in dim 0: inputs[0] has {first.shape[0]}, "
                f"inputs[{i}] has {value.shape[0]}"
            )
        if value.device != first.device:
            raise ValueError(f"inputs must be on one device: inputs[0] is on {first.device}, inputs[{i}] on {value.device}")
    return tuple(items), is_tuple


def format_baselines(baselines, inputs: Tensors, is_tuple: bool) -> Tensors:
    """One baseline per input, broadcast to the input's shape (an expanded view, no copy)."""
    if baselines is None:
        return tuple(torch.zeros((), dtype=x.dtype, device=x.device).expand_as(x) for x in inputs)
    items = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(items) != len(inputs):
        raise ValueError(f"baselines must have one entry per input tensor ({len(inputs)}), got {len(items)}")
    return tuple(_format_baseline(b, x, _label("baselines", i, is_tuple)) for i, (b, x) in enumerate(zip(items, inputs)))


def _format_baseline(baseline, x: torch.Tensor, label: str) -> torch.Tensor:
    if isinstance(baseline, bool) and x.dtype == torch.bool:
        baseline = torch.tensor(baseline)
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
        raise TypeError(f"{label} must be a number or a torch.Tensor, got {type(baseline).__name__}")
    if not isinstance(baseline, torch.Tensor):
        baseline = torch.tensor(baseline)
    if baseline.dtype.is_complex:
        raise TypeError(f"{label} has dtype {baseline.dtype}, which cannot stand in for an input of dtype {x.dtype}")
    if baseline.device != x.device:
        raise ValueError(f"{label} is on {baseline.device} but its input is on {x.device}")
    # captum's forms (the input's shape, one example (1, ...), a scalar) and whatever else
    # broadcasts to the input, e.g. one value per example (N, 1) or the example shape without dim 0
    if baseline.dim() > x.dim() or not _broadcasts(baseline.shape, x.shape):
        example = tuple(x.shape[1:])
        raise ValueError(
            f"{label} has shape {tuple(baseline.shape)}; expected a shape that broadcasts to the input's "
            f"{tuple(x.shape)}: the input's shape, one example {(1, *example)} or {example}, one value per "
            f"example {(x.shape[0], *([1] * len(example)))}, or a scalar"
        )
    check_finite(label, baseline)
    # a fractional baseline for integer inputs (perturbation methods) promotes the ablated input to
    # floating point, as captum's ``x * (1 - mask) + baseline * mask`` does
    dtype = x.dtype if x.is_floating_point() or not baseline.is_floating_point() else baseline.dtype
    return baseline.to(dtype).expand_as(x)


def _broadcasts(shape, target) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def format_additional_forward_args(args, n_examples: int) -> tuple | None:
    """A tuple (or None); tensors with a batch dim must have ``n_examples`` rows."""
    if args is None:
        return None
    args = args if isinstance(args, tuple) else (args,)
    for i, value in enumerate(args):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] != n_examples:
            raise ValueError(
                f"additional_forward_args[{i}] is a tensor with {value.shape[0]} rows but there are "
                f"{n_examples} examples; per-example tensors need the batch dim first (pass constants as "
                "non-tensors or 0-dim tensors)"
            )
    return args


def _map_batch_tensors(args: tuple | None, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple | None:
    if args is None:
        return None
    return tuple(fn(a) if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)


def repeat_args(args: tuple | None, times: int) -> tuple | None:
    """Per-example tensors repeated ``times`` times along dim 0, block after block (step-major), the
    layout of a batch of ``times`` path points per example."""
    if times == 1:
        return args
    return _map_batch_tensors(args, lambda a: a.repeat(times, *([1] * (a.dim() - 1))))


def repeat_interleave_args(args: tuple | None, times: int) -> tuple | None:
    """Per-example tensors with each row repeated ``times`` times in place (example-major)."""
    return _map_batch_tensors(args, lambda a: a.repeat_interleave(times, dim=0))


def select_args(args: tuple | None, index: torch.Tensor) -> tuple | None:
    """The rows ``index`` of every per-example tensor."""
    return _map_batch_tensors(args, lambda a: a[index.to(a.device)])


# ------------------------------------------------------------------------------------------------
# Targets


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked captum-style target.

    ``shared`` is an index tuple into the output's dims after the batch dim, the same for every
    example (``()`` = the output is already one scalar per example). ``per_example`` is a long
    tensor ``(n_examples, k)``: one index tuple per example (from a list or a 1-D tensor).
    """

    shared: tuple[int, ...] | None
    per_example: torch.Tensor | None
    n_examples: int

    @classmethod
    def parse(cls, target, n_examples: int) -> Target:
        if target is None:
            return cls((), None, n_examples)
        if isinstance(target, bool):
            raise TypeError("target must be an int, a tuple of ints, a list or a tensor, got a bool")
        if isinstance(target, int):
            return cls((target,), None, n_examples)
        if isinstance(target, tuple):
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
                raise TypeError(f"target as a tuple must hold ints (one index per output dim), got {target!r}")
            return cls(tuple(target), None, n_examples)
        if isinstance(target, torch.Tensor):
            return cls._from_tensor(target, n_examples)
        if isinstance(target, list):
            return cls._from_list(target, n_examples)
        raise TypeError(f"target must be an int, a tuple of ints, a list or a tensor, got {type(target).__name__}")

    @classmethod
    def _from_tensor(cls, target: torch.Tensor, n_examples: int) -> Target:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"target as a tensor must have an integer dtype, got {target.dtype}")
        if target.numel() == 1:
            return cls((int(target.item()),), None, n_examples)
        if target.dim() != 1 or target.numel() != n_examples:
            raise ValueError(
                f"target as a tensor must hold one index per example ({n_examples}), got shape {tuple(target.shape)}"
            )
        return cls(None, target.long().reshape(-1, 1), n_examples)

    @classmethod
    def _from_list(cls, target: list, n_examples: int) -> Target:
        if len(target) != n_examples:
            raise ValueError(f"target as a list must have one entry per example ({n_examples}), got {len(target)}")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            return cls(None, torch.tensor(target, dtype=torch.long).reshape(-1, 1), n_examples)
        if all(isinstance(t, tuple) for t in target):
            lengths = {len(t) for t in target}
            if len(lengths) != 1 or not all(isinstance(i, int) and not isinstance(i, bool) for t in target for i in t):
                raise TypeError("target as a list of tuples needs tuples of ints of one length")
            return cls(None, torch.tensor(target, dtype=torch.long).reshape(n_examples, -1), n_examples)
        raise TypeError("target as a list must hold only ints or only tuples of ints")

    def subset(self, index: torch.Tensor) -> Target:
        """The target of the examples ``index``."""
        if self.per_example is None:
            return dataclasses.replace(self, n_examples=index.numel())
        return Target(None, self.per_example[index.to(self.per_example.device)], index.numel())

    def select(self, output, rows: int) -> torch.Tensor:
        """The targeted outputs of a forward over ``rows`` rows whose example is ``row % n_examples``
        (blocks of examples, as for path points or perturbations)."""
        output = _output_tensor(output)
        if self.shared is not None:
            index = self.shared
            if index and len(index) > output.dim() - 1:
                raise ArgumentError(
                    f"target {index if len(index) > 1 else index[0]!r} needs {len(index)} output dims after "
                    f"the batch dim, but the forward output has shape {tuple(output.shape)}"
                )
            for dim, i in enumerate(index, 1):
                if not -output.shape[dim] <= i < output.shape[dim]:
                    raise ArgumentError(
                        f"target index {i} is out of range for dim {dim} of the forward output "
                        f"(shape {tuple(output.shape)})"
                    )
            return output[(slice(None), *index)] if index else output
        per_example = self.per_example.to(output.device)
        k = per_example.shape[1]
        if output.dim() < k + 1 or output.shape[0] != rows:
            raise ArgumentError(
                f"a per-example target with {k} index(es) needs a forward output of shape ({rows}, ...) with at "
                f"least {k + 1} dims, got {tuple(output.shape)}"
            )
        sizes = torch.tensor(output.shape[1 : k + 1], device=output.device)
        if bool(((per_example < -sizes) | (per_example >= sizes)).any()):
            raise ArgumentError(
                f"target holds indices out of range for the forward output of shape {tuple(output.shape)}"
            )
        row = torch.arange(rows, device=output.device)
        chosen = per_example[row % self.n_examples]
        return output[(row, *chosen.unbind(1))]


def _output_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return torch.tensor(output)
    raise TypeError(
        f"forward_func must return a tensor, got {type(output).__name__} (for a Hugging Face model, "
        "wrap it: lambda embeds: model(inputs_embeds=embeds).logits)"
    )


def run_forward(forward_func, inputs: Tensors, args: tuple | None) -> Any:
    return forward_func(*inputs, *args) if args else forward_func(*inputs)


def scalar_per_row(selected: torch.Tensor, rows: int) -> torch.Tensor:
    """``selected`` as a ``(rows,)`` vector, or a clear error when it is not one scalar per row."""
    if selected.dim() == 0 or selected.shape[0] != rows or selected.numel() != rows:
        raise ArgumentError(
            f"after selecting the target, the forward output has shape {tuple(selected.shape)}; expected one "
            f"scalar per example ({rows},): pass a target that picks one output per example"
        )
    return selected.reshape(rows)


class AttributionMethod:
    """Base of the method classes: captum's constructor.

    Args:
        forward_func: callable taking the inputs (then the additional forward args) and returning a
            tensor whose dim 0 is the batch (examples).
        dtype: None (default) runs the forward at the inputs' precision. ``torch.bfloat16`` /
            ``torch.float16`` runs it under ``torch.autocast`` (gradients, differences and their
            accumulation stay in the inputs' dtype, float32 for float32 inputs). Faster where the
            hardware has bf16 matrix units (on CPU, short sequences also get PyTorch's math
            attention, whose bf16 backward beats the flash kernel's); see each method's docstring
            for its measured accuracy.
    """

    def __init__(self, forward_func, *, dtype: torch.dtype | None = None) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func
        self.dtype = check_autocast_dtype(dtype)

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute_future(self, *args, **kwargs):
        """captum's asynchronous entry point: not implemented for this method, as in captum."""
        raise NotImplementedError(f"{type(self).__name__}.attribute_future is not implemented (as in captum)")


# ------------------------------------------------------------------------------------------------
# Model execution: frozen parameters, autocast, gradients


def check_autocast_dtype(dtype) -> torch.dtype | None:
    if dtype is None or dtype in AUTOCAST_DTYPES:
        return dtype
    raise ValueError(f"dtype must be None (full precision) or one of {AUTOCAST_DTYPES}, got {dtype!r}")


def autocast(dtype: torch.dtype | None, device: torch.device):
    """Autocast of the forward to ``dtype`` (None: a no-op)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _gradient_pass_mode(dtype: torch.dtype | None, x: torch.Tensor):
    if x.dim() < 3:  # not a batch of sequences
        return contextlib.nullcontext()
    return lean_backward.gradient_pass_mode(dtype, x.device, x.shape[0], x.shape[1])


def _module_of(forward_func) -> torch.nn.Module | None:
    if isinstance(forward_func, functools.partial):
        forward_func = forward_func.func
    if isinstance(forward_func, torch.nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


@contextlib.contextmanager
def frozen_parameters(forward_func):
    """Turn off ``requires_grad`` of the parameters of ``forward_func``'s module (when it is an
    ``nn.Module``, a bound method of one, or a ``functools.partial`` of either) and restore it after,
    so no autograd work is spent on weights."""
    module = _module_of(forward_func)
    params = [] if module is None else [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def gradient_mode(forward_func, keep: tuple[torch.nn.Module, ...] = ()):
    """:func:`frozen_parameters`, and the elementwise activations of ``forward_func``'s module as
    fused ops (:mod:`saliency_fast.methods.lean_backward`; ``keep``: modules left as they are, e.g.
    hooked layers) for the duration."""
    module = _module_of(forward_func)
    with frozen_parameters(forward_func), (
        contextlib.nullcontext() if module is None else lean_backward.fused_activations(module, keep)
    ):
        yield


def input_gradients(
    forward_func, points: Tensors, target: Target, args: tuple | None, dtype: torch.dtype | None = None
) -> Tensors:
    """Gradients of the targeted output (one scalar per row) w.r.t. ``points``, detached.

    Only ``points`` require grad: with frozen parameters autograd does no weight work, and the graph
    is freed when this returns. ``dtype`` autocasts the forward (the gradients come back in the
    points' dtype), attention included (see :func:`lean_backward.gradient_pass_mode`).
    """
    rows = points[0].shape[0]
    with torch.enable_grad():
        leaves = tuple(p.detach().requires_grad_(True) for p in points)
        with autocast(dtype, leaves[0].device), _gradient_pass_mode(dtype, leaves[0]):
            output = run_forward(forward_func, leaves, args)
        selected = scalar_per_row(target.select(output, rows), rows)
        grads = torch.autograd.grad(selected.sum(), leaves, allow_unused=True, materialize_grads=True)
    return tuple(grads)


def forward_values(forward_func, inputs: Tensors, target: Target, args: tuple | None) -> torch.Tensor:
    """The targeted outputs ``(n_examples,)`` at full precision under ``torch.inference_mode``."""
    rows = inputs[0].shape[0]
    with torch.inference_mode():
        output = run_forward(forward_func, inputs, args)
        return scalar_per_row(target.select(output, rows), rows)


def format_output(is_tuple: bool, values: Tensors):
    return values if is_tuple else values[0]


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
