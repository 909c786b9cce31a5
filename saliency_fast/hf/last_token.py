"""Decoder-only classifiers score each text's last real token, found from the attention mask.

``GPT2ForSequenceClassification``, ``LlamaForSequenceClassification`` and their kin find that
token from the pad id in ``input_ids``. Fed ``inputs_embeds`` (as attribution feeds them) they
take the last position; and with ``config.pad_token_id`` None, the usual state of published
GPT-2, Llama, Qwen and Mistral checkpoints, they refuse any batch of more than one ("Cannot
handle batch sizes > 1 if no padding token is defined"), IG's batch of path points included.

We read the last real token from the attention mask instead, which holds for left, right or any
padding, and leave the user's model and config untouched: run the body (``model.base_model``),
apply the head (``model.score``) to its hidden states and take each row's last real position, as
the model's own forward does. A model whose head has another name runs row by row, each row
cropped to its real tokens (what transformers accepts without a pad id).
"""

from __future__ import annotations

import torch
from torch import nn


def has_score_head(model: nn.Module) -> bool:
    """Whether ``model`` is a body plus a per-position ``score`` head (the transformers layout of
    every decoder-only ``*ForSequenceClassification`` but a few)."""
    body = getattr(model, "base_model", None)
    return isinstance(getattr(model, "score", None), nn.Module) and isinstance(body, nn.Module) and body is not model


def last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last non-padding position (``[B, S]`` -> long ``[B]``)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.bool()).argmax(-1)


def pooled_logits(model: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's logits at each row's last real token: ``hidden`` ``[B, S, H]`` -> ``[B, n_labels]``."""
    logits = model.score(hidden)
    rows = torch.arange(hidden.shape[0], device=logits.device)
    return logits[rows, last_real_positions(attention_mask).to(logits.device)]


def logits_row_by_row(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      **kwargs) -> torch.Tensor:
    """The model's own logits ``[B, n_labels]``, one unpadded row per call. ``kwargs`` (position
    and token-type ids, ``[B, S]`` tensors) are cropped with the row; real tokens are contiguous."""
    found = []
    for b in range(inputs_embeds.shape[0]):
        real = attention_mask[b].nonzero().flatten()
        span = slice(int(real[0]), int(real[-1]) + 1)
        row = {name: value[b : b + 1, span] if isinstance(value, torch.Tensor) else value
               for name, value in kwargs.items()}
        found.append(model(inputs_embeds=inputs_embeds[b : b + 1, span], attention_mask=attention_mask[b : b + 1, span],
                           **row).logits)
    return torch.cat(found)
