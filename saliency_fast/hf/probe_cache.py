"""The one cache of per-model probes: a shortcut (the split LM head, the last MLP at chosen rows, the
described decoder pass) is checked against the model once, and its verdict kept while the model
lives, recomputed when ``key`` (e.g. the model's set of forward hooks) changes."""

from __future__ import annotations

import weakref
from typing import Callable, Hashable

from torch import nn

_results: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probed(model: nn.Module, probe: Callable[[nn.Module], object], key: Hashable = None):
    """``probe(model)``, computed once per model, probe and ``key``."""
    found = _results.setdefault(model, {})
    entry = found.get(probe)
    if entry is None or entry[0] != key:
        entry = found[probe] = (key, probe(model))
    return entry[1]
