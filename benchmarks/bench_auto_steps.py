"""IG ``n_steps="auto"`` against fixed steps on a trained model: the real embedded all-MiniLM-L6-v2.

The attributed function is the cosine similarity of each text's mean-pooled MiniLM embedding with
a fixed anchor sentence, from the word embeddings (attention mask as an additional forward
argument, zero baseline). A trained model bends the path, so the number of points a given
completeness error needs is the model's, not a random init's nearly linear one. ``--texts``
texts (32; ``--quick`` 2), padded to the longest, attributed in one call by every contender:

- captum 0.9 ``IntegratedGradients``, ``n_steps=--steps`` (50, captum's default), Gauss-Legendre;
- ours with the same fixed steps (equal work: the outputs are compared);
- ours with ``n_steps="auto"``, ``rtol=--rtol`` (1 %): nested Gauss-Kronrod-Patterson levels, each
  text stopping once its completeness error is within ``rtol`` of ``F(x) - F(baseline)``.

The same ``internal_batch_size`` (rows per forward), warm-up and runs for everyone, interleaved
(benchmarks/_timing.py): one untimed call on the first 2 texts each, then ``--runs`` (1) timed calls
on all of them (a call on 32 texts takes tens of seconds; the script stays under 10 minutes). The
accuracy column holds the completeness error ``|sum(attributions) - (F(x) - F(baseline))| /
|F(x) - F(baseline)|`` each side reaches (median and largest over the texts) and the steps ours
used; ``floor`` is one forward + backward of the model over the same texts times ``--steps`` points.

    python benchmarks/bench_auto_steps.py            # 32 texts, a warm-up (2 texts) and 1 run each
    python benchmarks/bench_auto_steps.py --quick    # 2 texts, 16 fixed steps, 1 run
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved, median_time  # noqa: E402

SUBJECTS = ("the old bridge over the river", "our new neighbour", "the committee", "a small bakery in town",
            "the final chapter of the book", "the quarterly report", "my grandmother's garden", "the night train")
EVENTS = ("was closed for repairs after the storm", "surprised everyone with a generous offer",
          "could not agree on the budget again", "sold out of bread before nine in the morning")
ANCHOR = "a quiet evening walk along the sea"


def texts(count: int) -> list[str]:
    """``count`` distinct sentences of different lengths (a subject, an event, an optional tail)."""
    tails = ("", ", as expected", " and nobody was surprised", " last winter")
    found = [f"{s} {e}{tails[(i + j) % len(tails)]}." for i, s in enumerate(SUBJECTS) for j, e in enumerate(EVENTS)]
    if count > len(found):
        raise SystemExit(f"--texts: at most {len(found)} texts are defined, got {count}")
    return found[:count]


class Similarity(nn.Module):
    """Word embeddings (+ attention mask) -> cosine similarity of the mean-pooled text embedding
    with the anchor sentence's: one score per text."""

    def __init__(self, model, anchor: torch.Tensor) -> None:
        super().__init__()
        self.model, self.anchor = model, anchor

    def forward(self, embeds, mask):
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return nn.functional.cosine_similarity(pooled, self.anchor)


def relative_errors(delta: torch.Tensor, change: torch.Tensor) -> list[float]:
    return (delta.detach().double().abs() / change.double().abs()).tolist()


def summary(errors: list[float]) -> str:
    return f"median {statistics.median(errors):.1e}, max {max(errors):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50, help="the fixed steps (captum's default 50)")
    parser.add_argument("--rtol", type=float, default=0.01, help="ours n_steps='auto' relative tolerance")
    parser.add_argument("--internal-batch-size", type=int, default=256, help="rows per forward, everyone")
    parser.add_argument("--runs", type=int, default=1, help="timed runs each, after a warm-up on 2 texts")
    parser.add_argument("--quick", action="store_true", help="2 texts, 16 fixed steps, one run, no warm-up")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    import captum
    import captum.attr

    import saliency_fast
    from saliency_fast.hf import default_model
    from saliency_fast.methods import _common

    count, runs = (2, 1) if args.quick else (args.texts, args.runs)
    if args.quick:
        args.steps = 16
    model, tok = default_model()
    model.to(args.device)
    with torch.no_grad():
        anchor_enc = tok([ANCHOR], return_tensors="pt").to(args.device)
        anchor_hidden = model(**anchor_enc).last_hidden_state
        anchor = anchor_hidden.mean(1)  # one text, no padding: the mean over its tokens
    forward = Similarity(model, anchor).eval()
    enc = tok(texts(count), return_tensors="pt", padding=True).to(args.device)
    mask = enc["attention_mask"].float()
    with torch.no_grad():
        x = model.get_input_embeddings()(enc["input_ids"])
    baseline = torch.zeros_like(x)
    captum_ig = captum.attr.IntegratedGradients(forward)
    ours_fixed = saliency_fast.IntegratedGradients(forward)
    ours_auto = saliency_fast.IntegratedGradients(forward)
    out = {}

    def contenders(n: int) -> dict:
        """Each side's call on the first ``n`` texts."""
        inputs = dict(baselines=baseline[:n], additional_forward_args=(mask[:n],),
                      internal_batch_size=args.internal_batch_size, return_convergence_delta=True)
        return {
            "captum": lambda: out.update(captum=captum_ig.attribute(x[:n], n_steps=args.steps, method="gausslegendre",
                                                                    **inputs)),
            "ours fixed": lambda: out.update(fixed=ours_fixed.attribute(x[:n], n_steps=args.steps,
                                                                        method="gausslegendre", **inputs)),
            "ours auto": lambda: out.update(auto=ours_auto.attribute(x[:n], n_steps="auto", rtol=args.rtol, **inputs)),
        }

    print(f"all-MiniLM-L6-v2 similarity to {ANCHOR!r}, {count} texts x {x.shape[1]} tokens (padded), "
          f"{args.steps} fixed steps vs auto (rtol {args.rtol}), internal_batch_size {args.internal_batch_size}, "
          f"{torch.get_num_threads()} threads, device {args.device}", flush=True)
    for warm_up in contenders(2).values():
        warm_up()
    timings = {name: dataclasses.replace(t, warmup=1) for name, t in interleaved(
        contenders(count), runs=runs, warmup=0, device=args.device, progress=True).items()}

    # the floor: every fixed-step point once forward and backward, in chunks of internal_batch_size rows
    points, points_mask = x.repeat(args.steps, 1, 1), mask.repeat(args.steps, 1)
    chunks = [(points[i : i + args.internal_batch_size], points_mask[i : i + args.internal_batch_size])
              for i in range(0, points.shape[0], args.internal_batch_size)]

    def forward_backward():
        for chunk, chunk_mask in chunks:
            leaf = chunk.detach().requires_grad_(True)
            torch.autograd.grad(forward(leaf, chunk_mask).sum(), leaf)

    with _common.frozen_parameters(forward):
        floor = median_time(forward_backward, runs=runs, warmup=0, device=args.device)  # a minute a call: no warm-up

    with torch.no_grad():
        change = forward(x, mask) - forward(baseline, mask)
    (captum_attr, captum_delta), (fixed_attr, fixed_delta), (auto_attr, auto_delta) = \
        out["captum"], out["fixed"], out["auto"]
    captum_err, fixed_err, auto_err = (relative_errors(d, change) for d in (captum_delta, fixed_delta, auto_delta))
    steps_used = ours_auto.last_n_steps.tolist()
    scale = captum_attr.abs().max()
    fixed_diff = float((fixed_attr - captum_attr).abs().max() / scale)
    auto_diff = float((auto_attr - captum_attr).abs().max() / scale)
    used = f"{min(steps_used)}-{max(steps_used)} steps (median {statistics.median(steps_used):g})"
    for name, t in timings.items():
        print(f"{name:11} {t.median:8.2f} s")
    print(f"floor (forward + backward of {args.steps} points x {count} texts): {floor:.2f} s")
    print(f"completeness error: captum {args.steps} steps {summary(captum_err)}; ours {args.steps} steps "
          f"{summary(fixed_err)}; ours auto {summary(auto_err)} at {used}; max rel. diff from captum: ours fixed "
          f"{fixed_diff:.1e}, ours auto {auto_diff:.1e}")

    shape = f"real all-MiniLM-L6-v2 similarity, {count} texts x {x.shape[1]} tokens"
    captum_name = f"captum {captum.__version__} IG, {args.steps} steps"
    auto_accuracy = (f"completeness error: ours auto {summary(auto_err)} at {used}; "
                     f"{{peer}} {args.steps} steps {{peer_err}}")
    write_rows(args.json, [
        row(f"IG fp32, {shape}, {args.steps} steps", captum_name, timings["captum"], timings["ours fixed"],
            max_diff=fixed_diff, peer_dtype="float32", ours_dtype="float32", floor_s=floor, device=args.device,
            accuracy=f"completeness error: ours {summary(fixed_err)}, captum {summary(captum_err)}"),
        row(f"IG n_steps=auto (rtol {args.rtol:g}) against {args.steps} fixed steps, {shape}", captum_name,
            timings["captum"], timings["ours auto"], max_diff=auto_diff, peer_dtype="float32", ours_dtype="float32",
            floor_s=floor, kind="less-work", device=args.device,
            accuracy=auto_accuracy.format(peer="captum", peer_err=summary(captum_err))),
        row(f"IG n_steps=auto (rtol {args.rtol:g}) against {args.steps} fixed steps, {shape}",
            f"ours, {args.steps} fixed steps", timings["ours fixed"], timings["ours auto"],
            max_diff=float((auto_attr - fixed_attr).abs().max() / fixed_attr.abs().max()), peer_dtype="float32",
            ours_dtype="float32", floor_s=floor, kind="less-work", device=args.device,
            accuracy=auto_accuracy.format(peer="ours", peer_err=summary(fixed_err))),
    ])


if __name__ == "__main__":
    main()
