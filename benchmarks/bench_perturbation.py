"""LIME and KernelSHAP: saliency_fast against captum on the embedded all-MiniLM-L6-v2.

    python benchmarks/bench_perturbation.py            # 8 texts, 100 samples per text
    python benchmarks/bench_perturbation.py --quick    # 8 texts, 30 samples

The workload is the README's zero-shot sentiment (cosine margin of the text embedding to the
label prompts "positive" / "negative", the Explainer's forward over word embeddings) for 8 short
texts, one interpretable feature per token, removed tokens set to the pad token's embedding
(special tokens and padding keep theirs). Both libraries get the same call: the 8 texts as one
padded batch, ``target``, ``feature_mask``, ``baselines``, ``n_samples`` and the same seed, so they
draw the same samples and fit the same surrogates (LIME: sklearn's Lasso, alpha 1e-4; KernelSHAP:
weighted least squares); the attributions are checked equal before timing.

The forward is the Explainer's for perturbation methods: each row runs at its own length (trailing
padding cut off), for captum as for us. captum explains the examples one after the other,
``perturbations_per_eval`` samples of one text per forward; ours puts that many samples of every
text in one forward, evaluates a subset drawn twice (or differing only in tokens whose removal
changes nothing) once, takes the unperturbed text's output from the forward that checks the
output shape, and fits all surrogates at once. Two captum rows: at ours ``perturbations_per_eval``
(the equal comparison), and at captum's default 1.

The floor: each side's forwards, recorded and replayed alone (the model's time on exactly the
perturbations that side evaluates); it is printed with the rows run (forward rows and token rows,
each row at its length) and the forward FLOPs, and the rows carry it. On a CPU the two sides are
bound by these forwards, so the ratio at equal ``perturbations_per_eval`` is close to the ratio of
token rows: what deduplication saves.

Timing: one thread (``torch.set_num_threads(1)``), :func:`benchmarks._timing.interleaved` (the
contenders and the two floors take turns run by run, so a shared machine's drift hits all), median
of the runs after one warm-up each (the call whose outputs are compared).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import sys

import captum.attr
import torch
from captum._utils.models.linear_model import SkLearnLasso as CaptumLasso

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import saliency_fast  # noqa: E402
from benchmarks import _results  # noqa: E402
from benchmarks._timing import interleaved  # noqa: E402
from saliency_fast.hf import explainer as explainer_module  # noqa: E402
from saliency_fast.hf import default_model  # noqa: E402
from saliency_fast.methods.linear_models import SkLearnLasso  # noqa: E402

TEXTS = [
    "A wonderful, heartfelt film.",
    "This movie was incredibly bad, I hated every second of it.",
    "The acting was fine but the plot dragged.",
    "Absolutely loved the soundtrack.",
    "Boring, predictable and far too long.",
    "A clever script and a superb cast.",
    "I want those two hours back.",
    "Not great, not terrible.",
]
ALPHA = 1e-4  # the Explainer's LIME penalty: captum's 0.01 zeroes most tokens on cosine margins


def workload(n_texts: int, device: str = "cpu"):
    """The forward over word embeddings, the padded batch, its baselines and per-token features."""
    explainer = saliency_fast.Explainer(*default_model(), task="zero-shot", labels=["positive", "negative"],
                                        device=device)
    task = explainer._make_task(choices=None, reference=None, labels=None)
    units = task.encode(TEXTS[:n_texts])
    rows, _ = task.plan(units, explainer.predict(task, units), None)
    batch = explainer._pad(units)
    special = batch.place([u.special for u in units],
                          torch.zeros(batch.input_ids.shape, dtype=torch.bool, device=batch.input_ids.device))
    keep = ~batch.real() | special
    embeds = explainer.embedding(batch.input_ids).detach()
    baselines = explainer._baselines(batch, explainer.resolve_baseline("pad"), keep).detach()
    index = torch.tensor([r.index for r in rows])
    args = tuple(None if a is None else a.to(device) for a in (
        batch.attention_mask, batch.token_type_ids, batch.position_ids, index, torch.zeros_like(index), None))
    forward = functools.partial(explainer_module._score_forward_by_length, task, "margin")
    n_tokens = embeds.shape[1]
    feature_mask = torch.arange(n_tokens, device=device).view(1, n_tokens, 1)
    return forward, embeds, baselines, args, feature_mask


class Recording:
    """The forward, recording each call's arguments: the forwards a method ran, replayed alone give
    its floor (the model's time on exactly those perturbations)."""

    def __init__(self, forward) -> None:
        self.forward, self.calls = forward, []

    def __call__(self, *args):
        self.calls.append(args)
        return self.forward(*args)

    def token_rows(self) -> int:
        """Rows x tokens run: each row at its own length (the forward cuts trailing padding)."""
        return sum(int(call[1].ne(0).cumsum(1).argmax(1).add(1).sum()) for call in self.calls)

    def rows(self) -> int:
        return sum(call[0].shape[0] for call in self.calls)

    def replay(self) -> None:
        with torch.inference_mode():
            for call in self.calls:
                self.forward(*call)


def minilm_flops_per_token(length: int, hidden: int = 384, layers: int = 6, ffn: int = 1536) -> float:
    """Multiply-adds x 2 of one token through MiniLM's layers: Q, K, V, O (4 h^2), the MLP (2 h f),
    attention scores and mix (2 L h)."""
    return 2.0 * layers * (4 * hidden * hidden + 2 * hidden * ffn + 2 * length * hidden)


def contenders(method: str, forward, per_eval: int):
    if method == "lime":
        return {
            "ours": saliency_fast.Lime(forward, SkLearnLasso(alpha=ALPHA)),
            "captum": captum.attr.Lime(forward, CaptumLasso(alpha=ALPHA)),
        }
    return {"ours": saliency_fast.KernelShap(forward), "captum": captum.attr.KernelShap(forward)}


def run(method: str, n_samples: int, per_eval: int, runs: int, n_texts: int, device: str) -> list[dict]:
    forward, embeds, baselines, args, feature_mask = workload(n_texts, device)
    methods = contenders(method, forward, per_eval)

    def call(name: str, ppe: int):
        def go():
            torch.manual_seed(0)
            return methods[name].attribute(
                embeds, baselines=baselines, additional_forward_args=args, feature_mask=feature_mask,
                n_samples=n_samples, perturbations_per_eval=ppe,
            )
        return go

    calls = {"ours": call("ours", per_eval), f"captum ppe={per_eval}": call("captum", per_eval),
             "captum ppe=1": call("captum", 1)}
    results = {name: fn() for name, fn in calls.items()}  # warm-up, and the outputs to compare
    reference = results["captum ppe=1"]
    scale = float(reference.abs().max())
    diffs = {name: float((out - reference).abs().max()) / scale for name, out in results.items()}
    for name, diff in diffs.items():
        if diff > 1e-3:
            raise AssertionError(f"{method}: {name} differs from captum by {diff:.2e} of the largest attribution")
    floors = {}
    for name in ("ours", "captum"):  # the forwards each side runs at ppe=per_eval, recorded on one more call
        recording = Recording(forward)
        methods[name].forward_func = recording
        call(name, per_eval)()
        methods[name].forward_func = forward
        floors[name] = recording
    lengths = args[0].sum(1).float()
    duplicates = 1 - (floors["ours"].rows() - n_texts) / (n_texts * n_samples)  # less the unperturbed test forward
    print(f"{method}: {n_texts} texts, {float(lengths.mean()):.1f} tokens on average (special tokens included); "
          f"forward rows: captum {floors['captum'].rows()}, ours {floors['ours'].rows()} ({duplicates:.0%} of the "
          f"samples are repeats or the unperturbed text); token rows: captum {floors['captum'].token_rows()}, ours "
          f"{floors['ours'].token_rows()}", flush=True)
    # the floors (each side's forwards replayed alone) take turns with the contenders
    calls.update({"ours forwards": floors["ours"].replay, "captum forwards": floors["captum"].replay})
    timings = interleaved(calls, runs=runs, warmup=0, device=device)  # the calls above were each one's warm-up
    timings = {name: dataclasses.replace(t, warmup=1) for name, t in timings.items()}
    per_token = minilm_flops_per_token(round(float(lengths.mean())))
    for name, f in floors.items():
        print(f"  {name}'s forwards alone: {timings[name + ' forwards'].median:.2f} s, "
              f"{f.token_rows() * per_token / 1e9:.0f} GFLOP", flush=True)
    work = (f"{duplicates:.0%} repeats; forwards of {floors['ours'].token_rows()} token rows against captum's "
            f"{floors['captum'].token_rows()} (captum's forwards alone: {timings['captum forwards'].median:.2f} s)")
    workload_name = f"MiniLM zero-shot {method}, {n_texts} texts x {n_samples} samples, ours ppe={per_eval}"
    return [
        _results.row(workload_name, f"captum 0.9.0 {method} ({peer.split(' ', 1)[1]})", timings[peer],
                     timings["ours"], max_diff=diffs["ours"], peer_dtype="float32", ours_dtype="float32",
                     floor_s=timings["ours forwards"].median, accuracy=work, device=device)
        for peer in (f"captum ppe={per_eval}", "captum ppe=1")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 samples per text, 2 runs")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--per-eval", type=int, default=50, help="perturbations_per_eval (ours and captum's row)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", default="lime,kernel_shap", help="comma-separated: lime, kernel_shap")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (everyone)")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    samples, runs = (30, 2) if args.quick else (args.samples, args.runs)
    rows = []
    methods = args.methods.split(",")
    if not methods or any(m not in ("lime", "kernel_shap") for m in methods):
        parser.error(f"--methods: lime and/or kernel_shap, got {args.methods!r}")
    for method in methods:
        for row in run(method, samples, args.per_eval, runs, args.texts, args.device):
            rows.append(row)
            print(f"{row['workload']:<60} vs {row['peer']:<32} captum {row['peer_s']:7.2f} s  ours "
                  f"{row['ours_s']:7.2f} s  {row['ratio']:5.2f}x  max diff {row['max_diff']:.1e}", flush=True)
    _results.write_rows(args.json, rows)


if __name__ == "__main__":
    main()
