"""``Explainer.evaluate``: the faithfulness metrics of :mod:`saliency_fast.metrics` (model-agnostic,
over any ``predict_proba``) for several attribution methods on a Hugging Face classifier."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from saliency_fast.hf import batching, method_registry, model_io
from saliency_fast.metrics import AOPC_KS, DEFAULT_K, METRICS, PredictProba, check_ks, faithfulness


def explainer_predict_proba(explainer) -> PredictProba:
    """``predict_proba`` over an :class:`~saliency_fast.hf.explainer.Explainer`'s classifier: the
    softmax of its logits, padded as the Explainer pads (left for decoder-only models)."""
    task = explainer._make_task(choices=None, reference=None, labels=None)

    def predict_proba(sequences: list[torch.Tensor]) -> torch.Tensor:
        batch = batching.pad(sequences, None, batching.pad_id(explainer.tokenizer), left=explainer.decoder_only,
                             device=explainer.device)
        with torch.no_grad():
            logits = task.outputs(explainer.embedding(batch.input_ids), batch.attention_mask, None, batch.position_ids)
        return logits.float().softmax(-1)

    return predict_proba


def evaluate(
    explainer,
    texts,
    methods,
    *,
    k: int = DEFAULT_K,
    ks: Sequence[int] = AOPC_KS,
    baseline: str = "pad",
    aggregate: str = "sum",
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, list]:
    """Faithfulness of several attribution methods on ``texts``, one row per method (see
    :meth:`Explainer.evaluate <saliency_fast.hf.explainer.Explainer.evaluate>`)."""
    if explainer.task != "classify":
        raise ValueError(
            f"evaluate needs a classifier (task='classify') whose class probabilities the metrics read; "
            f"this Explainer's task is {explainer.task!r}"
        )
    items, _ = model_io.check_texts(texts)
    plans = _method_plans(methods)
    if not isinstance(baseline, str) or baseline == "zero":
        raise ValueError(
            f"baseline must name a token ('pad', 'mask', 'unk' or 'eos'): log-odds replaces the top tokens by it, "
            f"got {baseline!r}"
        )
    baseline_id = explainer.resolve_baseline(baseline, needs_token=True).token_id  # falls back as attribute's
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k must be an int percentage, got {k!r}")
    aopc_ks = check_ks(ks)
    ks = tuple(sorted(set(aopc_ks) | {k}))
    predict_proba = explainer_predict_proba(explainer)
    table: dict[str, list] = {"method": [], "n_texts": [], "seconds": []}
    for name, kwargs in plans:
        start = time.perf_counter()
        results = explainer.attribute(items, method=name, baseline=baseline, aggregate=aggregate, progress=progress,
                                      **kwargs)
        seconds = time.perf_counter() - start
        found = faithfulness(
            predict_proba, [torch.tensor(r.token_ids, dtype=torch.long) for r in results],
            [r.scores[0] for r in results], baseline_id=baseline_id, attributable=[r.mask[0] for r in results],
            ks=ks, batch_size=batch_size or explainer.batch_size, progress=progress,
        )
        table["method"].append(name)
        table["n_texts"].append(len(items))
        table["seconds"].append(seconds)
        for metric in METRICS:
            table.setdefault(f"{metric}@{k}", []).append(float(found.at(metric, k).mean()))
        for metric in METRICS:
            table.setdefault(f"aopc_{metric}", []).append(float(found.aopc(metric, aopc_ks).mean()))
    return table


def _method_plans(methods) -> list[tuple[str, dict]]:
    """``methods`` as ``(name, method_kwargs)`` pairs: a list of names, or a dict name -> kwargs."""
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, dict):
        plans = list(methods.items())
    elif isinstance(methods, (list, tuple)):
        plans = [(name, {}) for name in methods]
    else:
        raise TypeError(f"methods must be a list of method names or a dict name -> options, got {type(methods).__name__}")
    if not plans:
        raise ValueError("methods must name at least one method")
    for name, kwargs in plans:
        if not isinstance(kwargs, dict):
            raise TypeError(f"the options of method {name!r} must be a dict, got {type(kwargs).__name__}")
        # every name and option checked before the first method spends time
        method_registry.check_method_kwargs(method_registry.resolve_method(name, "classify"), kwargs)
    return [(name, dict(kwargs)) for name, kwargs in plans]
