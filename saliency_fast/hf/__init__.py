"""Hugging Face glue: the Explainer, tokens, targets, baselines, causal generation.

``from saliency_fast.hf import default_model``: ``(model, tokenizer)`` of the packaged
all-MiniLM-L6-v2 (see :mod:`saliency_fast.hf.packaged_model`).
"""

from saliency_fast.hf.packaged_model import default_model, default_model_path

__all__ = ["default_model", "default_model_path"]
