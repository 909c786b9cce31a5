"""Length-bucketed batching of token sequences: sort by length, pad per batch, restore order.

Encoders are padded on the right. Decoder-only models are padded on the left, with explicit
position ids, because their heads read the last position: fed through ``inputs_embeds`` a
Hugging Face decoder cannot find the last real token from pad ids and takes the last position.
"""

from __future__ import annotations

import dataclasses

import torch

def is_decoder_only(model) -> bool:
    """True for causal decoder-only architectures (GPT-2, Llama, ...), False for encoders (BERT, ...).

    Judged by the model type: one that has a causal-LM head class but no masked-LM head class.
    """
    from transformers.models.auto import modeling_auto

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (
        model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def pad_id(tokenizer) -> int:
    """The id padding is filled with: masked out everywhere, so any valid id would do."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclasses.dataclass
class PaddedBatch:
    """A padded batch of sequences: ``offsets[b]`` is where row ``b``'s first real token sits."""

    input_ids: torch.Tensor  # long [B, S]
    attention_mask: torch.Tensor  # long [B, S]
    token_type_ids: torch.Tensor | None  # long [B, S]
    position_ids: torch.Tensor | None  # long [B, S], only for left padding
    offsets: list[int]
    lengths: list[int]

    def real(self) -> torch.Tensor:
        return self.attention_mask.bool()

    def place(self, per_row: list[torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
        """Scatter per-row tensors ``[len_b, ...]`` into the padded layout over ``fill`` ``[B, S, ...]``."""
        out = fill.clone()
        for b, (value, offset, length) in enumerate(zip(per_row, self.offsets, self.lengths)):
            out[b, offset : offset + length] = value
        return out

    def crop(self, values: torch.Tensor, b: int) -> torch.Tensor:
        """Row ``b`` of ``values`` (``[B, S, ...]``) without its padding."""
        return values[b, self.offsets[b] : self.offsets[b] + self.lengths[b]]


def pad(
    input_ids: list[torch.Tensor],
    token_type_ids: list[torch.Tensor] | None,
    pad_token_id: int,
    left: bool,
    device: torch.device | str = "cpu",
) -> PaddedBatch:
    """Pad 1-D id sequences into one batch (left padding also yields position ids)."""
    lengths = [int(ids.shape[0]) for ids in input_ids]
    width = max(lengths)
    offsets = [width - n if left else 0 for n in lengths]
    ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    types = None if token_type_ids is None else torch.zeros((len(input_ids), width), dtype=torch.long)
    for b, (offset, n) in enumerate(zip(offsets, lengths)):
        ids[b, offset : offset + n] = input_ids[b]
        mask[b, offset : offset + n] = 1
        if types is not None:
            types[b, offset : offset + n] = token_type_ids[b]
    positions = (mask.cumsum(-1) - 1).clamp_min(0) if left else None
    ids, mask, types, positions = (None if t is None else t.to(device) for t in (ids, mask, types, positions))
    return PaddedBatch(ids, mask, types, positions, offsets, lengths)
