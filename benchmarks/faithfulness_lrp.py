"""Faithfulness of AttnLRP / CP-LRP against IG, input x gradient and saliency on the real MiniLM.

Model: the embedded all-MiniLM-L6-v2 (``saliency_fast.hf.default_model()``) as a zero-shot sentiment
classifier (labels ``positive`` / ``negative``, template ``"This text is {}."``), over the 72 short
reviews below (36 positive, 36 negative, written for this table). Each method attributes the
zero-shot margin of the predicted label (the Explainer's default score); token scores are the
signed sum over the embedding dim (``aggregate="sum"``, as :meth:`Explainer.evaluate` ranks tokens).

Metrics: :func:`saliency_fast.metrics.faithfulness` (Sanyal & Ren, 2021): log-odds (lower is
better), comprehensiveness (higher is better) and sufficiency (lower is better) at the top 20 %
of tokens, and their AOPC over 1, 5, 10, 20 and 50 %; the top tokens are replaced by / kept against
``[PAD]``. The zero-shot class probabilities they read are ``softmax(20 * cosine)`` over the labels:
20 is the similarity scale all-MiniLM-L6-v2 was trained with (sentence-transformers'
MultipleNegativesRankingLoss), and for two labels the attributed margin is the log-odds / 20.

    python benchmarks/faithfulness_lrp.py            # the table (markdown) on stdout
    python benchmarks/faithfulness_lrp.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSITIVE = [
    "A wonderful film with a moving story.", "I loved every minute of it.", "The acting was superb.",
    "Great food and friendly staff.", "This phone works perfectly.", "An absolute delight from start to finish.",
    "The hotel room was clean and cozy.", "Fantastic service, I will come back.", "A brilliant and funny book.",
    "The concert was amazing tonight.", "Highly recommended, worth every penny.", "She gave a beautiful performance.",
    "The best pizza in town.", "My new laptop is fast and reliable.", "What a lovely afternoon in the park.",
    "The course was clear and very helpful.", "A charming little cafe with great coffee.",
    "The sequel is even better than the original.", "Our guide was kind and knowledgeable.",
    "The app is simple and easy to use.", "I am thrilled with the results.", "A heartwarming tale of friendship.",
    "The soup was rich and delicious.", "Excellent quality at a fair price.", "The kids had a fantastic time.",
    "This game is fun and addictive.", "The view from the balcony was stunning.", "A smart, witty and stylish show.",
    "Delivery was quick and the package was perfect.", "The teacher was patient and inspiring.",
    "I enjoyed this album a lot.", "A gorgeous garden full of flowers.", "The shoes are comfortable and pretty.",
    "Support solved my problem right away.", "A joyful, uplifting movie.", "The new update made everything better.",
]
NEGATIVE = [
    "A boring film with a silly plot.", "I hated every minute of it.", "The acting was terrible.",
    "Cold food and rude staff.", "This phone broke after a day.", "An absolute mess from start to finish.",
    "The hotel room was dirty and noisy.", "Awful service, I will never come back.", "A dull and pointless book.",
    "The concert was a disappointment.", "Overpriced and not worth the money.", "She gave a wooden performance.",
    "The worst pizza in town.", "My new laptop is slow and buggy.", "What a miserable afternoon in the rain.",
    "The course was confusing and useless.", "A gloomy cafe with bitter coffee.",
    "The sequel is far worse than the original.", "Our guide was rude and ignorant.",
    "The app is clumsy and crashes often.", "I am upset with the results.", "A depressing tale of betrayal.",
    "The soup was bland and greasy.", "Poor quality at a high price.", "The kids were bored and cranky.",
    "This game is tedious and frustrating.", "The view from the balcony was ugly.", "A dumb, lazy and tacky show.",
    "Delivery was late and the package was damaged.", "The teacher was impatient and unfair.",
    "I regret buying this album.", "A neglected garden full of weeds.", "The shoes are painful and cheap.",
    "Support ignored my problem for weeks.", "A grim, exhausting movie.", "The new update ruined everything.",
]
TEXTS = POSITIVE + NEGATIVE
LABELS = ["positive", "negative"]
SIMILARITY_SCALE = 20.0
METHODS = {
    "attnlrp": {},
    "cp_lrp": {},
    "integrated_gradients": {"n_steps": 32},
    "input_x_gradient": {},
    "saliency": {},
    "lime": {"seed": 0},
}


def zero_shot_predict_proba(explainer):
    """``predict_proba`` of the zero-shot task: ``softmax(scale * cosine)`` over the label prompts."""
    from saliency_fast.hf import batching

    task = explainer._make_task(choices=None, reference=None, labels=None)

    def predict_proba(sequences: list[torch.Tensor]) -> torch.Tensor:
        batch = batching.pad(sequences, None, batching.pad_id(explainer.tokenizer), left=False,
                             device=explainer.device)
        with torch.no_grad():
            pooled = task.outputs(explainer.embedding(batch.input_ids), batch.attention_mask, None, None)
        similarity = torch.nn.functional.normalize(pooled.float(), dim=-1) @ task.label_embeddings.T
        return (SIMILARITY_SCALE * similarity).softmax(-1)

    return predict_proba


def table(threads: int) -> list[dict]:
    import saliency_fast
    from saliency_fast import metrics
    from saliency_fast.hf import baselines
    from saliency_fast.hf import default_model

    torch.set_num_threads(threads)
    model, tokenizer = default_model()
    explainer = saliency_fast.Explainer(model, tokenizer, task="zero-shot", labels=LABELS)
    predict_proba = zero_shot_predict_proba(explainer)
    baseline_id = baselines.token_id(tokenizer, "pad")
    ks = tuple(sorted(set(metrics.AOPC_KS) | {metrics.DEFAULT_K}))
    rows = []
    for name, kwargs in METHODS.items():
        start = time.perf_counter()
        results = explainer.attribute(TEXTS, method=name, aggregate="sum", baseline="pad", progress=False, **kwargs)
        seconds = time.perf_counter() - start
        found = metrics.faithfulness(
            predict_proba, [torch.tensor(r.token_ids) for r in results], [r.scores[0] for r in results],
            baseline_id=baseline_id, attributable=[r.mask[0] for r in results], ks=ks,
        )
        row = {"method": name, "n_texts": len(TEXTS), "seconds": seconds}
        for metric in metrics.METRICS:
            row[f"{metric}@{metrics.DEFAULT_K}"] = float(found.at(metric, metrics.DEFAULT_K).mean())
        for metric in metrics.METRICS:
            row[f"aopc_{metric}"] = float(found.aopc(metric, metrics.AOPC_KS).mean())
        rows.append(row)
        print(f"{name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    accuracy = sum(r.metadata["prediction"] == ("positive" if i < len(POSITIVE) else "negative")
                   for i, r in enumerate(results)) / len(TEXTS)
    print(f"zero-shot accuracy of the model on these texts: {accuracy:.2f}", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    columns = [c for c in rows[0] if c not in ("n_texts", "seconds")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(row[c] if isinstance(row[c], str) else f"{row[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = table(args.threads)
    print(markdown(rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
