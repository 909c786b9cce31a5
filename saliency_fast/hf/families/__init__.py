"""Per-family descriptions of decoder bodies over the blocks of :mod:`saliency_fast.hf.decoder_blocks`.

Each module here has ``describe(model) -> Decoder | None``: the model's body written as shared
blocks (norms, rotary embeddings, grouped-query attention, plain or gated MLP), or None when the
model is not of its family. :mod:`saliency_fast.hf.decoder_pass` runs one forward and one backward
over any description and probes it against autograd once per model, so adding a family is one small
module listed in :data:`FAMILIES` plus its test against autograd (tests/test_decoder_pass.py).
"""

from __future__ import annotations

from saliency_fast.hf.decoder_blocks import Decoder
from saliency_fast.hf.families import gemma, gpt2, llama, opt, phi3

FAMILIES = (gpt2, llama, gemma, phi3, opt)


def describe(model) -> Decoder | None:
    """The first family's description of ``model``; None when no family describes it."""
    for family in FAMILIES:
        found = family.describe(model)
        if found is not None:
            return found
    return None
