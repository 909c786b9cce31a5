"""Target functions: which scalar of a model's output is attributed, and which class it reads.

Shared by the whole-input tasks (classification, tagging, multiple choice) and causal-LM
generation. A target function turns logits and a class/token index into one score per row:

- ``logit``: the raw logit of the class;
- ``prob``: its softmax probability;
- ``logprob``: its log-probability;
- ``loss``: the cross-entropy with that class as the label (``-logprob``), so attributions say
  what lowers the loss when they are negative.

Contrastive targets (Yin & Neubig, 2022, as inseq's ``contrast_prob_diff`` / ``contrast_logits_diff``
step functions define them) score a class/token against a competing one read from the same
output: ``contrast_prob_diff`` is ``p(class) - p(contrast)``, ``contrast_logit_diff`` is
``logit(class) - logit(contrast)``; their index has a trailing dim of 2 (class, contrast).

The softmax-based targets are computed in float32 whatever the model's dtype, because their
normaliser (log-sum-exp over every class) is where half precision overflows first.
"""

from __future__ import annotations

import numbers

import torch

TARGET_CHOICES = ("logit", "prob", "logprob", "loss")
CONTRAST_CHOICES = ("contrast_prob_diff", "contrast_logit_diff")


def check_target_fn(kind, name: str = "target") -> str:
    """``kind`` if it is one of :data:`TARGET_CHOICES` or :data:`CONTRAST_CHOICES`, else a
    ``ValueError`` naming ``name``."""
    if not isinstance(kind, str) or kind not in TARGET_CHOICES + CONTRAST_CHOICES:
        raise ValueError(f"{name} must be one of {TARGET_CHOICES + CONTRAST_CHOICES}, got {kind!r}")
    return kind


def is_contrastive(kind) -> bool:
    return kind in CONTRAST_CHOICES


def score_from_parts(target_logit: torch.Tensor, log_normalizer: torch.Tensor | None, kind: str) -> torch.Tensor:
    """The score from the target's logit and ``logsumexp`` over all classes (``None`` for ``logit``).

    This form lets a caller compute only the target rows of a large head (an LM head) and the
    normaliser separately; :func:`score_from_logits` is the same thing for a full logit tensor.
    """
    check_target_fn(kind)
    if is_contrastive(kind):
        raise ValueError(f"target {kind!r} reads two classes: use score_from_logits with a (class, contrast) index")
    if kind == "logit":
        return target_logit
    if log_normalizer is None:
        raise ValueError(f"target {kind!r} needs the log-sum-exp of all logits (log_normalizer)")
    logprob = target_logit.float() - log_normalizer.float()
    if kind == "prob":
        return logprob.exp()
    return logprob if kind == "logprob" else -logprob


def score_from_logits(logits: torch.Tensor, index: torch.Tensor, kind: str) -> torch.Tensor:
    """Score of class ``index`` (long ``[...]``; ``[..., 2]`` (class, contrast) for a contrastive
    kind) in ``logits`` (``[..., C]``): a tensor ``[...]``."""
    check_target_fn(kind)
    if is_contrastive(kind):
        if index.shape[-1] != 2:
            raise ValueError(f"target {kind!r} needs a (class, contrast) index pair, got shape {tuple(index.shape)}")
        base = "prob" if kind == "contrast_prob_diff" else "logit"
        return score_from_logits(logits, index[..., 0], base) - score_from_logits(logits, index[..., 1], base)
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    lse = None if kind == "logit" else torch.logsumexp(logits.float(), dim=-1)
    return score_from_parts(picked, lse, kind)


def class_labels(model) -> list[str]:
    """Label names of a classification head, by class index (``config.id2label``)."""
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", 0) or len(id2label))
    return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]


def resolve_class(target, labels: list[str], name: str = "target", what: str = "class") -> int | None:
    """Index of ``target`` among ``labels``: ``None`` stays ``None`` (the caller's default, usually
    the prediction), an integer is range-checked, a string is looked up by label name."""
    if target is None:
        return None
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = int(target.item())
    if isinstance(target, bool) or not isinstance(target, (numbers.Integral, str)):
        raise TypeError(f"{name} must be a {what} index (int) or a {what} name (str), got {type(target).__name__}")
    if isinstance(target, str):
        if target in labels:
            return labels.index(target)
        folded = [label.lower() for label in labels]
        if folded.count(target.lower()) == 1:
            return folded.index(target.lower())
        raise ValueError(f"{name}={target!r} is not a known {what}; expected one of {labels}")
    index = int(target)
    if not 0 <= index < len(labels):
        raise ValueError(f"{name}={index} is out of range: expected a {what} index in 0..{len(labels) - 1}")
    return index
