"""Loading TracIn checkpoints: captum's format (a state dict, optionally with a
``learning_rate`` entry) read without unpickling arbitrary objects, and the check that a
checkpoint's parameters match the model's."""

from __future__ import annotations

import glob
import os
import pathlib

import torch
from torch import nn


def checkpoint_paths(checkpoints) -> list:
    """captum's ``checkpoints`` argument as a list: a directory (its files, in natural order), a
    list of paths (sorted the same way), or any iterable (kept in order)."""
    if isinstance(checkpoints, (str, os.PathLike)):
        paths = _natural_sort(glob.glob(os.path.join(os.fspath(checkpoints), "*")))
    elif isinstance(checkpoints, list) and checkpoints and isinstance(checkpoints[0], (str, os.PathLike)):
        paths = _natural_sort([os.fspath(c) for c in checkpoints])
    else:
        paths = list(checkpoints)
    if not paths:
        raise ValueError(f"Invalid checkpoints provided for TracIn class: {checkpoints}!")
    return paths


def _natural_sort(paths: list[str]) -> list[str]:
    import re

    def key(path: str):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]

    return sorted(paths, key=key)


def load_state_dict(path) -> dict:
    """A checkpoint's state dict: safetensors by suffix, else ``torch.load(weights_only=True)``
    (tensors and plain containers only; nothing else is unpickled)."""
    path = os.fspath(path)
    if pathlib.Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def check_matches(model: nn.Module, state: dict, path) -> None:
    """ValueError naming the first parameter whose name or shape does not match the model."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
    missing = [name for name in expected if name not in got]
    unexpected = [name for name in got if name not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model does not"
        raise ValueError(f"checkpoints: {path} does not match the model: it {what}")
    for name, shape in expected.items():
        if got[name] != shape:
            raise ValueError(
                f"checkpoints: {path} does not match the model: {name!r} has shape {got[name]}, the model's is {shape}"
            )


def load_flexible_state_dict(model: nn.Module, path) -> float:
    """captum's default ``checkpoints_load_func``: load the state dict into ``model`` and return
    its learning rate (1.0 when it has none)."""
    state = load_state_dict(path)
    learning_rate = state.pop("learning_rate", 1.0)
    if isinstance(learning_rate, torch.Tensor):
        learning_rate = float(learning_rate)
    target = model.module if isinstance(model, nn.DataParallel) else model
    if next(iter(state), "").startswith("module."):
        state = {name.removeprefix("module."): t for name, t in state.items()}
    check_matches(target, state, path)
    target.load_state_dict(state)
    return learning_rate
