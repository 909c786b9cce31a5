"""What a method returns to the Explainer (a leaf: the registry and the methods' modules both build it)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class MethodOutput:
    attributions: torch.Tensor  # [B, S, D]
    completeness_error: torch.Tensor | None = None  # [B] |sum(attr) - (F(x) - F(baseline))|
    n_steps: torch.Tensor | None = None  # [B] gradient evaluations per row (path methods)
    scores: torch.Tensor | None = None  # [B] the attributed output F(x) (LRP: what relevance conserves)
