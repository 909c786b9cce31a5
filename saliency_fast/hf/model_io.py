"""Glue between Hugging Face models/tokenizers and attribution.

Attribution interpolates the *word* embeddings only: inputs go to the model as
``inputs_embeds``, so the model adds position and token-type embeddings (and its embedding
LayerNorm) itself, to the interpolated points as to the real ones. Hooking the embedding
module's output instead would interpolate positions too, a common mistake.
"""

from __future__ import annotations

import torch
from torch import nn


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The model's input word-embedding table; ``TypeError`` if it has none we can feed."""
    getter = getattr(model, "get_input_embeddings", None)
    emb = getter() if callable(getter) else None
    if not isinstance(emb, nn.Embedding):
        raise TypeError(
            f"model must expose its word embeddings through get_input_embeddings() as an nn.Embedding; "
            f"{type(model).__name__} gives {type(emb).__name__}"
        )
    return emb


def max_positions(model: nn.Module, tokenizer=None) -> int | None:
    """The longest input (in tokens) the model accepts, or None if it states no limit."""
    config = getattr(model, "config", None)
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions")]
    limits = [int(v) for v in limits if isinstance(v, int) and v > 0]
    return min(limits) if limits else None


def check_length(n_tokens: int, model: nn.Module, what: str = "text") -> None:
    """Over-long input is an error that states the limit, never a silent truncation."""
    limit = max_positions(model)
    if limit is not None and n_tokens > limit:
        raise ValueError(f"{what} is {n_tokens} tokens long but the model accepts at most {limit} tokens")


def check_texts(texts, name: str = "texts") -> tuple[list[str], bool]:
    """Normalise ``texts`` to a non-empty list of non-empty strings; also say if one was given."""
    single = isinstance(texts, str)
    items = [texts] if single else texts
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got {type(texts).__name__}")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty; expected text to attribute" if not single else f"{name} is empty")
    return list(items), single


def special_ids(tokenizer) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}


def special_mask(tokenizer, input_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask of special tokens (CLS, SEP, PAD, BOS, ...) in ``input_ids``."""
    ids = sorted(special_ids(tokenizer))
    if not ids:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))


def token_texts(tokenizer, ids) -> list[str]:
    """Readable text of each token id (raw text: escaping is the views' job)."""
    return [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]
