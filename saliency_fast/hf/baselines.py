"""Baselines: the token (or zero vector) a path method starts from, on any real tokenizer.

Only the methods that read a baseline resolve one (integrated, discretized and sequential IG,
occlusion, LIME, KernelSHAP, GradientSHAP, DeepLIFT); saliency, input x gradient, SmoothGrad,
VarGrad, Grad-CAM and attention never look at it.

Real tokenizers often lack the default token: GPT-2's has no pad token (its unk is its eos),
Llama-3's has neither pad nor unk. A requested kind the tokenizer lacks falls back along
:data:`FALLBACKS`, with one :class:`BaselineFallbackWarning` per Explainer and fallback, and the
result's ``metadata["baseline"]`` names the kind used:

- ``pad`` (the default): pad -> unk -> eos -> the zero embedding. unk then eos is the token
  inseq's generation baseline ends up with on such tokenizers (it fills a missing unk with pad,
  a missing pad with eos), so our defaults compare with inseq's; zero is the last resort.
- ``unk``: unk -> pad, the pair inseq treats as interchangeable.
- ``mask``, ``eos``, ``zero``: no fallback; a missing token is a ``ValueError`` that names the
  special tokens the tokenizer has.

Methods whose path must end at a word (DIG) skip the zero fallback.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import torch
from torch import nn

BASELINE_CHOICES = ("pad", "mask", "unk", "eos", "zero")
FALLBACKS = {
    "pad": ("pad", "unk", "eos", "zero"),
    "unk": ("unk", "pad"),
    "mask": ("mask",),
    "eos": ("eos",),
    "zero": ("zero",),
}


class BaselineFallbackWarning(UserWarning):
    """The tokenizer lacks the requested baseline token; another kind was used (see the message)."""


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A resolved baseline: ``kind`` is the token kind used (``pad``, ``unk``, ...), ``zero``, or
    ``tensor`` (the user's ``[D]`` / ``[n_tokens, D]`` tensor)."""

    kind: str
    requested: str
    token_id: int | None = None
    tensor: torch.Tensor | None = None


def check(baseline, embedding_dim: int) -> None:
    """The ``baseline`` argument's type, kind and tensor shape (no tokenizer needed)."""
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point():
            raise TypeError(f"baseline tensor must be floating point, got {baseline.dtype}")
        if baseline.dim() not in (1, 2) or baseline.shape[-1] != embedding_dim:
            raise ValueError(
                f"baseline tensor must have shape [{embedding_dim}] or [n_tokens, {embedding_dim}], "
                f"got {tuple(baseline.shape)}"
            )
        return
    if not isinstance(baseline, str):
        raise TypeError(f"baseline must be one of {BASELINE_CHOICES} or a tensor, got {type(baseline).__name__}")
    if baseline not in BASELINE_CHOICES:
        raise ValueError(f"baseline must be one of {BASELINE_CHOICES} or a tensor, got {baseline!r}")


def token_id(tokenizer, kind: str) -> int | None:
    """The tokenizer's ``pad`` / ``mask`` / ``unk`` / ``eos`` id, or None if it has none."""
    value = getattr(tokenizer, f"{kind}_token_id", None)
    return None if value is None else int(value)


def resolve(tokenizer, baseline, needs_token: bool = False) -> Baseline:
    """The baseline actually used for ``baseline`` (a kind or a tensor): the first kind of its
    fallback chain the tokenizer has. ``needs_token`` drops the zero fallback (a requested
    ``zero`` stays: the method names what it needs)."""
    if isinstance(baseline, torch.Tensor):
        return Baseline("tensor", "tensor", tensor=baseline)
    if baseline not in FALLBACKS:
        raise ValueError(f"baseline must be one of {BASELINE_CHOICES} or a tensor, got {baseline!r}")
    chain = [kind for kind in FALLBACKS[baseline] if not (needs_token and kind == "zero" and kind != baseline)]
    for kind in chain:
        if kind == "zero":
            return Baseline("zero", baseline)
        found = token_id(tokenizer, kind)
        if found is not None:
            return Baseline(kind, baseline, token_id=found)
    tried = " or ".join(chain)
    raise ValueError(
        f"baseline={baseline!r} but the tokenizer has no {tried} token (its special tokens: "
        f"{describe_special_tokens(tokenizer)}); pass baseline='zero', a tensor, or a kind it has"
    )


def describe_special_tokens(tokenizer) -> str:
    """``bos_token='<s>', eos_token='</s>'``: the special tokens a tokenizer defines, or ``none``."""
    found = getattr(tokenizer, "special_tokens_map", None) or {}
    named = [f"{name}={value!r}" for name, value in found.items() if isinstance(value, str)]
    return ", ".join(named) if named else "none"


class Resolver:
    """Resolves baselines for one tokenizer, warning once for each fallback it takes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._warned: set[tuple[str, str]] = set()

    def __call__(self, baseline, needs_token: bool = False) -> Baseline:
        found = resolve(self.tokenizer, baseline, needs_token)
        key = (found.requested, found.kind)
        if found.kind != found.requested and key not in self._warned:
            self._warned.add(key)
            what = "the zero embedding" if found.kind == "zero" else f"its {found.kind} token"
            warnings.warn(
                f"baseline={found.requested!r}: the tokenizer has no {found.requested} token, using {what} "
                f"(fallback order {' -> '.join(FALLBACKS[found.requested])}); result.metadata['baseline'] "
                f"says {found.kind!r}",
                BaselineFallbackWarning, stacklevel=_user_stacklevel(),
            )
        return found


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("saliency_fast"):
        frame, level = frame.f_back, level + 1
    return level


def baseline_embeds(
    embedding: nn.Embedding,
    input_ids: torch.Tensor,
    baseline: Baseline,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Word embeddings of the baseline for ``input_ids`` (``[batch, seq]`` -> ``[batch, seq, dim]``).

    A ``tensor`` baseline must broadcast to the embeddings. Positions in ``keep`` (special
    tokens, padding) take their real embedding, so they lie on a constant path and receive no
    attribution.
    """
    real = embedding(input_ids)
    if baseline.tensor is not None:
        try:
            base = baseline.tensor.to(device=real.device, dtype=real.dtype).expand_as(real).clone()
        except RuntimeError as exc:
            raise ValueError(
                f"baseline tensor of shape {tuple(baseline.tensor.shape)} does not broadcast to the embeddings "
                f"{tuple(real.shape)}"
            ) from exc
    elif baseline.token_id is None:
        base = torch.zeros_like(real)
    else:
        base = embedding(torch.full_like(input_ids, baseline.token_id))
    if keep is not None:
        base = torch.where(keep.unsqueeze(-1), real, base)
    return base
