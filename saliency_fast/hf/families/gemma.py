"""Gemma (the first): the Llama layout with RMSNorm scaling by ``1 + weight`` (the word embeddings'
``sqrt(hidden_size)`` scale is the embedding module's own, before the body)."""

from __future__ import annotations

from saliency_fast.hf.decoder_blocks import Decoder
from saliency_fast.hf.families.llama import describe_layout


def describe(model) -> Decoder | None:
    if getattr(model.config, "model_type", None) != "gemma":
        return None
    return describe_layout(model, "gemma", norm_offset=1.0)
