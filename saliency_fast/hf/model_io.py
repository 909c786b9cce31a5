"""Glue between Hugging Face models/tokenizers and attribution.

Attribution interpolates the *word* embeddings only: inputs go to the model as
``inputs_embeds``, so the model adds position and token-type embeddings (and its embedding
LayerNorm) itself, to the interpolated points as to the real ones. Hooking the embedding
module's output instead would interpolate positions too, a common mistake.
"""

from __future__ import annotations

import torch
from torch import nn

BASELINE_CHOICES = ("pad", "mask", "unk", "zero")


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


def baseline_token_id(tokenizer, kind: str) -> int | None:
    """The token a ``pad`` / ``mask`` / ``unk`` baseline is made of; None for ``zero``."""
    if kind not in BASELINE_CHOICES:
        raise ValueError(f"baseline must be one of {BASELINE_CHOICES} or a tensor, got {kind!r}")
    if kind == "zero":
        return None
    token_id = getattr(tokenizer, f"{kind}_token_id", None)
    if token_id is None:
        raise ValueError(f"baseline={kind!r} but the tokenizer has no {kind} token; choose another of {BASELINE_CHOICES}")
    return int(token_id)


def baseline_embeds(
    embedding: nn.Embedding,
    tokenizer,
    input_ids: torch.Tensor,
    baseline,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Word embeddings of the baseline for ``input_ids`` (``[batch, seq]`` -> ``[batch, seq, dim]``).

    ``baseline`` is a kind from :data:`BASELINE_CHOICES` or a tensor broadcastable to the embeddings.
    Positions in ``keep`` (special tokens, padding) take their real embedding, so they lie on a
    constant path and receive no attribution.
    """
    real = embedding(input_ids)
    if isinstance(baseline, torch.Tensor):
        try:
            base = baseline.to(device=real.device, dtype=real.dtype).expand_as(real).clone()
        except RuntimeError as exc:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the embeddings {tuple(real.shape)}"
            ) from exc
    else:
        token_id = baseline_token_id(tokenizer, baseline)
        if token_id is None:
            base = torch.zeros_like(real)
        else:
            base = embedding(torch.full_like(input_ids, token_id))
    if keep is not None:
        base = torch.where(keep.unsqueeze(-1), real, base)
    return base


def token_texts(tokenizer, ids) -> list[str]:
    """Readable text of each token id (raw text: escaping is the views' job)."""
    return [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]
