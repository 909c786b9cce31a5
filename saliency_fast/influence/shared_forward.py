"""Work that checkpoints share, done once: when TracIn's checkpoints differ only in some tensors
(a head trained on a frozen encoder, the last blocks fine-tuned), the forward through the modules
they all agree on is the same for every checkpoint. This module finds those modules by comparing
the checkpoints' tensors (nothing is assumed about which ones train) and runs each batch through
them once for all checkpoints.

- :class:`CheckpointStates` loads every checkpoint once with the caller's load function, keeps
  only the tensors (parameters and buffers) in which checkpoints differ, and switches the model
  between checkpoints by copying those tensors in place.
- :func:`shared_modules` names the largest modules whose tensors are equal in every checkpoint
  and that hold none of the layers whose gradients are taken.
- :func:`gradient_scope` lets only the chosen layers' parameters require grad (so the shared
  modules build no autograd graph) and memoizes each shared module: called again with the same
  inputs (equal tensors, unchanged since), it returns the output of its last call instead of
  recomputing it. Only outputs that need no gradient are kept, and only from modules in eval
  mode (dropout would make two calls differ).

A caller then iterates batches in the outer loop and checkpoints in the inner one, so the
memoized outputs are those of the current batch only (memory stays one batch's activations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


class CheckpointStates:
    """Every checkpoint loaded once (``load(model, checkpoint)``, its return value kept in
    :attr:`loaded`); :attr:`varying` names the tensors that differ between checkpoints, and
    :meth:`activate` puts checkpoint ``c``'s values of those into the model."""

    def __init__(self, model: nn.Module, checkpoints: Sequence, load: Callable):
        self.model = model
        self.loaded = []
        first: dict[str, torch.Tensor] = {}
        self._values: list[dict[str, torch.Tensor]] = []
        varying: set[str] = set()
        with torch.no_grad():
            for c, checkpoint in enumerate(checkpoints):
                self.loaded.append(load(model, checkpoint))
                tensors = _tensors(model)
                if c == 0:
                    first = {name: t.detach().clone() for name, t in tensors.items()}
                    continue
                varying |= {name for name, t in tensors.items() if name not in first or not _equal(t, first[name])}
                self._values.append({name: tensors[name].detach().clone() for name in varying})
        self.varying = frozenset(varying)
        # checkpoint 0's values, and each later checkpoint's of the tensors found varying after it
        # (a tensor that first differs at checkpoint c was equal to checkpoint 0's before c)
        self._values.insert(0, {name: first[name] for name in self.varying})
        for values in self._values[1:]:
            for name in self.varying - values.keys():
                values[name] = first[name]
        self._active: int | None = len(self.loaded) - 1 if self.loaded else None

    def __len__(self) -> int:
        return len(self.loaded)

    def activate(self, c: int) -> None:
        """The model holds checkpoint ``c`` (only the varying tensors are copied)."""
        if c == self._active:
            return
        tensors = _tensors(self.model)
        with torch.no_grad():
            for name, value in self._values[c].items():
                tensors[name].copy_(value)
        self._active = c


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach(), b.to(a.device)))


def shared_modules(model: nn.Module, varying: frozenset[str], layers: Sequence[str]) -> list[str]:
    """The largest submodules (not the model itself) whose parameters and buffers are all equal
    across checkpoints and that neither are nor contain a layer in ``layers``."""
    out: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(done + ".") for done in out):
            continue
        holds_layer = any(layer == name or layer.startswith(name + ".") for layer in layers)
        if holds_layer:
            continue
        own = [f"{name}.{n}" for n, _ in (*module.named_parameters(), *module.named_buffers())]
        if not any(n in varying for n in own):
            out.append(name)
    return out


class _Memo:
    """Replaces one module's ``forward``: the last call's output is returned again for equal
    inputs, provided it needs no gradient and no tensor of it was modified in place since."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._own_forward = module.__dict__.get("forward")
        self.forward = module.forward
        self._key = None
        self._out = None
        self._versions: list[int] = []
        self.hits = 0
        module.forward = self

    def __call__(self, *args, **kwargs):
        if any(m.training for m in self.module.modules()):
            self._key, self._out = None, None
            return self.forward(*args, **kwargs)
        if self._key is not None and _same((args, kwargs), self._key) and self._versions == _versions(self._out):
            self.hits += 1
            return self._out
        out = self.forward(*args, **kwargs)
        if any(t.requires_grad for t in _flat_tensors(out)):
            self._key, self._out = None, None
        else:
            self._key, self._out, self._versions = (args, kwargs), out, _versions(out)
        return out

    def remove(self) -> None:
        if self._own_forward is None:
            del self.module.forward
        else:
            self.module.forward = self._own_forward


def _flat_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _flat_tensors(item)]
    return []


def _versions(obj) -> list[int]:
    return [t._version for t in _flat_tensors(obj)]


def _same(a, b) -> bool:
    """Equal call arguments: tensors by value (the same object first), containers item by item,
    anything else by identity or ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                          and bool(torch.equal(a, b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # an object whose == is not a plain comparison: not known to be equal
        return False


@contextlib.contextmanager
def gradient_scope(model: nn.Module, params: Sequence[nn.Parameter], memoize: Sequence[str] = ()):
    """Within it only ``params`` require grad, and the modules named in ``memoize`` reuse their
    last output for equal inputs; both undone on exit."""
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    modules = dict(model.named_modules())
    memos = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        memos = [_Memo(modules[name]) for name in memoize]
        yield memos
    finally:
        for memo in memos:
            memo.remove()
        for p in frozen:
            p.requires_grad_(True)


@contextlib.contextmanager
def checkpoints_shared(model: nn.Module, checkpoints: Sequence, load: Callable, layers: Sequence[str],
                       params: Sequence[nn.Parameter]):
    """Every checkpoint loaded once (:class:`CheckpointStates`, yielded), and within it the
    gradient scope of ``params`` with every module the checkpoints share memoized: callers loop
    over batches outside and checkpoints (``states.activate(c)``) inside."""
    states = CheckpointStates(model, checkpoints, load)
    with gradient_scope(model, params, shared_modules(model, states.varying, layers)):
        yield states
