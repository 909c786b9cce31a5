"""What the method registry's runners take and return (a leaf: the registry, the Explainer, the
generation engine and the methods' own modules all import it, none of them each other)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn


@dataclasses.dataclass
class MethodOutput:
    """What a method run over word embeddings returns to the Explainer."""

    attributions: torch.Tensor  # [B, S, D] (per-token methods: the token's score on every dim, or D = 1)
    completeness_error: torch.Tensor | None = None  # [B] |sum(attr) - (F(x) - F(baseline))|
    n_steps: torch.Tensor | None = None  # [B] gradient evaluations per row (path methods)
    scores: torch.Tensor | None = None  # [B] the attributed output F(x) (LRP: what relevance conserves)
    layer_scores: torch.Tensor | None = None  # [B, n_layers, S] (attention: every layer's row)


@dataclasses.dataclass
class EmbeddingJob:
    """One batch for a method over word embeddings: ``forward(inputs, *args) -> [B]`` scores.

    ``keep`` (bool ``[B, S]``) marks positions that are not attributed (special tokens, padding):
    they already equal the baseline. DIG reads the token ids, the embedding matrix (whose rows
    ``inputs`` are), the baseline token and the ids that keep a constant path. ``model`` is the
    module ``forward`` runs (DeepLIFT puts its rules on its modules, Grad-CAM reads a block).
    The two callables are lazy: only the methods that need them pay for them.
    """

    forward: Callable
    inputs: torch.Tensor  # [B, S, D]
    baselines: torch.Tensor | None  # [B, S, D]: None for methods that read no baseline
    args: tuple  # additional_forward_args of ``forward``
    kwargs: dict  # the method's options, ``dtype`` taken out
    dtype: torch.dtype | None  # autocast of the forward (accumulation stays float32)
    keep: torch.Tensor
    input_ids: torch.Tensor
    internal_batch_size: int | None
    model: nn.Module
    baseline_token_id: int | None
    special_token_ids: list[int]
    embedding_matrix: Callable[[], torch.Tensor]
    attention: Callable[[], torch.Tensor]  # [B, n_layers, S]: attention paid by each row's scored position


@dataclasses.dataclass
class GenerationJob:
    """One forced sequence for a method of the single causal pass (:mod:`saliency_fast.hf.causal_pass`):
    ``cp`` holds the embeddings and targets, ``board`` receives each target's row of scores."""

    cp: Any  # causal_pass.CausalPass
    board: Any  # causal_pass.ScoreBoard
    baselines: torch.Tensor | None  # [N, D] baseline embeddings of the sequence
    baseline: Any  # the resolved baselines.Baseline (its token, for DIG), or None
    kwargs: dict  # the method's options (engine options and layer requests taken out)
    embedding: nn.Module  # maps ids to what the model reads (encoder-decoder: both sides)
    input_ids: torch.Tensor  # [N]
    keep: torch.Tensor  # bool [N]: tokens never attributed
    rules: Any = None  # LRP: the rules on the model (saliency_fast.methods.lrp), else None
    name: str = ""  # the method's name (progress bars)


@dataclasses.dataclass
class GenerationOutput:
    """What a generation runner reports besides the board's scores."""

    metadata: dict = dataclasses.field(default_factory=dict)  # n_steps, completeness_error, conservation, ...
    layer_scores: torch.Tensor | None = None  # [T, n_layers, L] (attention: every layer's row)
