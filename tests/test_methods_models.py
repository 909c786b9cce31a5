"""Small models and helpers shared by the ``test_methods*`` tests."""

from __future__ import annotations

import torch
from torch import nn

from tests import tiny_models


class TokenMLP(nn.Module):
    """(N, L, D) embeddings -> (N, 3) logits: a per-token MLP, then a mean over tokens."""

    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x, scale=None):
        out = self.net(x).mean(1)
        return out if scale is None else out * scale.unsqueeze(1)


class TwoInputModel(nn.Module):
    """Two inputs (N, L, D) and (N, K) -> a (N, 2, 3) output, for tuple inputs and tuple targets."""

    def __init__(self, dim: int = 8, k: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(dim, 6)
        self.b = nn.Linear(k, 6)

    def forward(self, x, y, shift=0.0):
        h = torch.tanh(self.a(x).mean(1) + self.b(y) + shift)
        return h.reshape(-1, 2, 3)


class BertLogits(nn.Module):
    """A 2-layer random BERT classifier over ``inputs_embeds`` (attention mask as an extra arg)."""

    def __init__(self, seed: int = 0, **overrides) -> None:
        super().__init__()
        self.bert = tiny_models.tiny_bert("classification", seed=seed, **overrides)

    def forward(self, embeds, attention_mask=None):
        return self.bert(inputs_embeds=embeds, attention_mask=attention_mask).logits

    def embed(self, n: int = 3, length: int = 8, seed: int = 1) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(1000, 5000, (n, length), generator=generator)
        return self.bert.bert.embeddings.word_embeddings(ids).detach()


def relative_difference(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| over all tensors (of a tuple)."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    diff = max(float((a.detach().double() - b.detach().double()).abs().max()) for a, b in zip(ours, theirs))
    scale = max(float(b.detach().double().abs().max()) for b in theirs)
    assert scale > 0, "the reference is all zeros: the comparison would be empty"
    return diff / scale
