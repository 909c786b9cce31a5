"""Faithfulness metrics of token attributions, as defined by Sanyal & Ren (2021), "Discretized
Integrated Gradients for Explaining Language Models", EMNLP 2021, section 4 (after DeYoung et
al., 2020, ERASER, for comprehensiveness, sufficiency and AOPC).

For an input ``x`` whose prediction ``y`` (the argmax class of the unperturbed input, fixed for
every perturbation) has probability ``p(y | x)``, and the top-``k`` % attributed tokens ``T_k``:

- log-odds: ``log p(y | x with T_k replaced by the baseline token) - log p(y | x)``; the word
  embeddings of ``T_k`` become the baseline token's, positions stay. Lower is more faithful.
- comprehensiveness: ``p(y | x) - p(y | x with T_k deleted)``. Higher is more faithful.
- sufficiency: ``p(y | x) - p(y | only T_k kept)``. Lower is more faithful.
- AOPC of each: its mean over ``k`` in :data:`AOPC_KS` (1, 5, 10, 20, 50 %).

``T_k`` holds the ``floor(k / 100 * n)`` tokens with the largest (signed) scores among the ``n``
attributable tokens (special tokens are never perturbed and always kept), ties broken by position,
as the reference code does with ``int(n * k / 100)``; so at small ``k`` on short texts ``T_k`` can
be empty: comprehensiveness and log-odds are 0 there, and sufficiency is the drop when only the
special tokens remain. The metrics are means over examples in the paper; the
functions here return one value per example so callers can average, bootstrap or inspect.

Every perturbed sequence of every example, ``k`` and metric goes through ``predict_proba`` in
batches of ``batch_size`` sequences of similar length. ``predict_proba(sequences)`` takes a list
of 1-D long tensors (token ids) and returns class probabilities ``[len(sequences), n_classes]``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

METRICS = ("log_odds", "comprehensiveness", "sufficiency")
AOPC_KS = (1, 5, 10, 20, 50)
DEFAULT_K = 20

PredictProba = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclasses.dataclass
class Faithfulness:
    """Per-example metric values: ``values[metric]`` is ``[n_examples, len(ks)]``."""

    ks: tuple[int, ...]
    prediction: torch.Tensor  # long [n_examples], the fixed predicted class
    values: dict[str, torch.Tensor]

    def at(self, metric: str, k: int = DEFAULT_K) -> torch.Tensor:
        """The metric at ``k`` % per example."""
        _check_metric(metric, self.values)
        if k not in self.ks:
            raise ValueError(f"k must be one of the evaluated ks {self.ks}, got {k!r}")
        return self.values[metric][:, self.ks.index(k)]

    def aopc(self, metric: str, ks: Sequence[int] | None = None) -> torch.Tensor:
        """The metric averaged over ``ks`` (default: every evaluated k) per example: the AOPC when
        they are :data:`AOPC_KS`."""
        _check_metric(metric, self.values)
        ks = self.ks if ks is None else tuple(ks)
        missing = sorted(set(ks) - set(self.ks))
        if missing:
            raise ValueError(f"ks {missing} were not evaluated (evaluated: {self.ks})")
        return self.values[metric][:, [self.ks.index(k) for k in ks]].mean(1)


def faithfulness(
    predict_proba: PredictProba,
    input_ids: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    *,
    baseline_id: int | None = None,
    attributable: Sequence[torch.Tensor] | None = None,
    ks: Sequence[int] = AOPC_KS,
    metrics: Sequence[str] = METRICS,
    batch_size: int = 32,
    progress: bool = False,
) -> Faithfulness:
    """``metrics`` at every ``k`` % in ``ks`` for each example (see the module docstring).

    Args:
        predict_proba: token ids (a list of 1-D long tensors) -> probabilities ``[n, n_classes]``.
        input_ids: one 1-D long tensor per example.
        scores: one 1-D score per token per example (NaN allowed where not ``attributable``).
        baseline_id: the token whose word embedding replaces the top tokens (log-odds only).
        attributable: bool per token, False for tokens never perturbed (special tokens); default all.
        ks: percentages in ``(0, 100]``.
        metrics: a subset of :data:`METRICS`.
        batch_size: sequences per ``predict_proba`` call.
    """
    ids, scores, attributable = _check_examples(input_ids, scores, attributable)
    ks = check_ks(ks)
    metrics = tuple(metrics)
    for metric in metrics:
        _check_metric(metric, METRICS)
    if "log_odds" in metrics and (isinstance(baseline_id, bool) or not isinstance(baseline_id, int)):
        raise ValueError(f"baseline_id must be a token id (int) for log_odds, got {baseline_id!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    sequences = list(ids)  # the unperturbed inputs first, then every perturbation
    for metric in metrics:
        for example_ids, example_scores, mask in zip(ids, scores, attributable):
            for k in ks:
                top = top_k_mask(example_scores, mask, k)
                sequences.append(perturb(metric, example_ids, top, mask, baseline_id))
    probs = _predict_batched(predict_proba, sequences, batch_size, progress)
    n = len(ids)
    prediction = probs[:n].argmax(-1)
    original = probs[:n].gather(1, prediction[:, None])  # [n, 1]
    perturbed = probs[n:].reshape(len(metrics), n, len(ks), -1)
    values = {}
    for m, metric in enumerate(metrics):
        p = perturbed[m].gather(2, prediction[:, None, None].expand(n, len(ks), 1)).squeeze(2)  # [n, len(ks)]
        values[metric] = p.log() - original.log() if metric == "log_odds" else original - p
    return Faithfulness(ks, prediction, values)


def log_odds(predict_proba, input_ids, scores, *, baseline_id: int, k: int = DEFAULT_K, attributable=None,
             batch_size: int = 32) -> torch.Tensor:
    """Log-odds at ``k`` % per example (Sanyal & Ren, 2021); lower is more faithful."""
    return _one("log_odds", predict_proba, input_ids, scores, baseline_id, k, attributable, batch_size)


def comprehensiveness(predict_proba, input_ids, scores, *, k: int = DEFAULT_K, attributable=None,
                      batch_size: int = 32) -> torch.Tensor:
    """Comprehensiveness at ``k`` % per example (DeYoung et al., 2020); higher is more faithful."""
    return _one("comprehensiveness", predict_proba, input_ids, scores, None, k, attributable, batch_size)


def sufficiency(predict_proba, input_ids, scores, *, k: int = DEFAULT_K, attributable=None,
                batch_size: int = 32) -> torch.Tensor:
    """Sufficiency at ``k`` % per example (DeYoung et al., 2020); lower is more faithful."""
    return _one("sufficiency", predict_proba, input_ids, scores, None, k, attributable, batch_size)


def aopc(metric: str, predict_proba, input_ids, scores, *, baseline_id: int | None = None, ks=AOPC_KS,
         attributable=None, batch_size: int = 32) -> torch.Tensor:
    """``metric`` averaged over ``ks`` per example (area over the perturbation curve)."""
    found = faithfulness(predict_proba, input_ids, scores, baseline_id=baseline_id, attributable=attributable,
                         ks=ks, metrics=(metric,), batch_size=batch_size)
    return found.aopc(metric)


def top_k_mask(scores: torch.Tensor, attributable: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``floor(k / 100 * n)`` highest-scored attributable tokens (ties: earlier first)."""
    n_top = int(int(attributable.sum()) * k / 100)
    ranked = torch.where(attributable, scores.double(), torch.tensor(float("-inf"), dtype=torch.float64))
    order = torch.sort(ranked, descending=True, stable=True).indices[:n_top]
    top = torch.zeros_like(attributable)
    top[order] = True
    return top


def perturb(metric: str, input_ids: torch.Tensor, top: torch.Tensor, attributable: torch.Tensor,
            baseline_id: int | None) -> torch.Tensor:
    """The token ids ``metric`` scores: top tokens replaced (log-odds), deleted (comprehensiveness),
    or the only attributable ones kept (sufficiency)."""
    if metric == "log_odds":
        return torch.where(top, torch.full_like(input_ids, baseline_id), input_ids)
    if metric == "comprehensiveness":
        return input_ids[~top]
    return input_ids[top | ~attributable]


def _one(metric, predict_proba, input_ids, scores, baseline_id, k, attributable, batch_size) -> torch.Tensor:
    found = faithfulness(predict_proba, input_ids, scores, baseline_id=baseline_id, attributable=attributable,
                         ks=(k,), metrics=(metric,), batch_size=batch_size)
    return found.values[metric][:, 0]


def _predict_batched(predict_proba: PredictProba, sequences: list[torch.Tensor], batch_size: int,
                     progress: bool) -> torch.Tensor:
    """Probabilities of every sequence, in batches of similar length (less padding), in input order."""
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    out: torch.Tensor | None = None
    for start in tqdm(range(0, len(order), batch_size), desc="faithfulness", unit="batch", disable=not progress):
        chunk = order[start : start + batch_size]
        probs = predict_proba([sequences[i] for i in chunk])
        if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or probs.shape[0] != len(chunk):
            raise ValueError(
                f"predict_proba must return probabilities [n_sequences, n_classes] ({len(chunk)} rows), got "
                f"{tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__}"
            )
        probs = probs.detach().double().cpu()
        if out is None:
            out = torch.empty(len(sequences), probs.shape[1], dtype=torch.float64)
        out[chunk] = probs
    return out


def _check_examples(input_ids, scores, attributable):
    if isinstance(input_ids, torch.Tensor) or not isinstance(input_ids, (list, tuple)) or not input_ids:
        raise TypeError("input_ids must be a non-empty list of 1-D long tensors (one per example)")
    if not isinstance(scores, (list, tuple)) or len(scores) != len(input_ids):
        raise ValueError(f"scores must be a list with one 1-D tensor per example ({len(input_ids)})")
    if attributable is None:
        attributable = [torch.ones(len(ids), dtype=torch.bool) for ids in input_ids]
    elif not isinstance(attributable, (list, tuple)) or len(attributable) != len(input_ids):
        raise ValueError(f"attributable must be a list with one bool tensor per example ({len(input_ids)})")
    ids_out, scores_out, masks_out = [], [], []
    for i, (ids, score, mask) in enumerate(zip(input_ids, scores, attributable)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype != torch.long or ids.numel() == 0:
            raise TypeError(f"input_ids[{i}] must be a non-empty 1-D long tensor")
        score = torch.as_tensor(score).detach().cpu().reshape(-1)
        mask = torch.as_tensor(mask).cpu().reshape(-1)
        if score.numel() != ids.numel() or mask.numel() != ids.numel():
            raise ValueError(
                f"scores[{i}] and attributable[{i}] must have one entry per token ({ids.numel()}), got "
                f"{score.numel()} and {mask.numel()}"
            )
        if mask.dtype != torch.bool:
            raise TypeError(f"attributable[{i}] must be a bool tensor, got {mask.dtype}")
        if not bool(torch.isfinite(score[mask]).all()):
            raise ValueError(f"scores[{i}] has NaN or inf at attributable tokens")
        ids_out.append(ids.cpu())
        scores_out.append(score)
        masks_out.append(mask)
    return ids_out, scores_out, masks_out


def check_ks(ks) -> tuple[int, ...]:
    if isinstance(ks, (int, str)) or not ks:
        raise ValueError(f"ks must be a non-empty sequence of percentages, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 100:
            raise ValueError(f"ks must hold percentages in (0, 100], got {k!r}")
    return tuple(ks)


def _check_metric(metric, known) -> None:
    if metric not in known:
        raise ValueError(f"metric must be one of {tuple(known)}, got {metric!r}")
