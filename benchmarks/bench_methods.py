"""Integrated Gradients on a random BERT-base: captum 0.9 vs saliency_fast, in one process.

Model: ``BertForSequenceClassification(BertConfig())`` (12 layers, hidden 768, random init),
texts of ``--tokens`` random word pieces, IG w.r.t. the embedding output (the forward takes
``inputs_embeds``), zero baseline, ``--steps`` Gauss-Legendre steps, the same
``internal_batch_size`` for everyone. Rows of the table:

- ``model floor``: the unavoidable work, ``steps`` points x one forward + backward to the
  embeddings at the same chunk size (parameters frozen, inputs prepared outside the timer);
- ``captum fp32`` / ``ours fp32``: same arguments, outputs compared (max relative difference);
- ``captum bf16`` / ``ours bf16``: captum under ``torch.autocast("cpu", torch.bfloat16)`` (how a
  captum user runs bf16) against ours with ``dtype=torch.bfloat16`` (autocast): equal work; each
  one's error against captum fp32 is the accuracy column.

``n_steps="auto"`` is measured on a trained model (the real MiniLM) by benchmarks/bench_auto_steps.py:
a random-init model's path is nearly linear, so the steps it needs say little.

Contenders run interleaved (benchmarks/_timing.py: the same warm-up and ``--repeats`` timed runs
each), and the median is reported, which keeps a shared machine's load from favouring whoever
ran first. On a busy machine pass
``--threads 1 --clock cpu``: with more threads than free cores, every op's OpenMP barrier waits
for a descheduled thread (a large per-op cost unrelated to the work), and one thread's CPU time
is what the work costs whatever else runs.

    python benchmarks/bench_methods.py            # 3 rounds
    python benchmarks/bench_methods.py --quick    # 1 round
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import captum.attr
import torch
import transformers
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import saliency_fast  # noqa: E402
from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import Timing, interleaved  # noqa: E402
from saliency_fast.methods import quadrature  # noqa: E402


class EmbedsToLogit(nn.Module):
    """The attributed function: the classifier's logits from word embeddings."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds):
        return self.model(inputs_embeds=embeds).logits


def build(layers: int, batch: int, tokens: int, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(num_hidden_layers=layers)
    model = transformers.BertForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (batch, tokens), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    with torch.no_grad():
        embeds = model.bert.embeddings.word_embeddings(ids)
    return EmbedsToLogit(model), embeds


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def model_floor(forward, x: torch.Tensor, target: int, steps: int, chunk_steps: int):
    """``steps`` points' forward + backward to the embeddings, in chunks of ``chunk_steps`` points,
    the inputs built beforehand: what any IG implementation must at least spend."""
    alphas, _ = quadrature.gausslegendre(steps)
    chunks = [
        torch.cat([a * x for a in alphas[i : i + chunk_steps].tolist()])
        for i in range(0, steps, chunk_steps)
    ]

    def run():
        params = [p for p in forward.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            for chunk in chunks:
                leaf = chunk.requires_grad_(True)
                out = forward(leaf)[:, target]
                torch.autograd.grad(out.sum(), leaf)
                leaf.requires_grad_(False)
        finally:
            for p in params:
                p.requires_grad_(True)

    return run


def on_clock(timing: Timing, clock: str) -> Timing:
    """The timing on ``clock``: wall time, or this process's CPU time (which other processes'
    load barely moves; meaningful with one thread, where no time goes to spinning at barriers)."""
    return timing if clock == "wall" else Timing(timing.cpu_times, timing.cpu_times, timing.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timing round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--internal-batch-size", type=int, default=40)
    parser.add_argument("--target", type=int, default=1)
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where model and inputs live")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 keeps a shared, busy machine from distorting "
                             "the timings with OpenMP barrier waits")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what is timed: wall time, or process CPU time (use with --threads 1 on a busy machine)")
    args = parser.parse_args()
    repeats, warmup = (1, 0) if args.quick else (args.repeats, 1)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    forward, x = build(args.layers, args.batch, args.tokens)
    forward, x = forward.to(args.device), x.to(args.device)
    common = dict(target=args.target, n_steps=args.steps, method="gausslegendre",
                  internal_batch_size=args.internal_batch_size)
    captum_ig = captum.attr.IntegratedGradients(forward)
    ours = saliency_fast.IntegratedGradients(forward)
    ours_bf16 = saliency_fast.IntegratedGradients(forward, dtype=torch.bfloat16)
    results = {}

    def keep(name, fn):
        def run():
            results[name] = fn()
        return run

    contenders = {
        "model floor": model_floor(forward, x, args.target, args.steps, args.internal_batch_size // args.batch),
        "captum fp32": keep("captum", lambda: captum_ig.attribute(x, **common)),
        "captum bf16": keep("captum bf16", lambda: captum_autocast(captum_ig, x, args.device, common)),
        "ours fp32": keep("ours", lambda: ours.attribute(x, **common)),
        "ours bf16": keep("bf16", lambda: ours_bf16.attribute(x, **common)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {saliency_fast.info()['backend']}; "
          f"BERT {args.layers} layers, {args.batch} x {args.tokens} tokens, {args.steps} steps, "
          f"internal_batch_size {args.internal_batch_size}")
    timings = {name: on_clock(t, args.clock) for name, t in interleaved(
        contenders, runs=repeats, warmup=warmup, device=args.device, progress=True).items()}

    # outputs and accuracy (outside the timers)
    with torch.no_grad():
        change = forward(x)[:, args.target] - forward(torch.zeros_like(x))[:, args.target]
    captum_error = captum_ig.compute_convergence_delta(results["captum"], 0.0, x, target=args.target)
    rows = [
        ("model floor", "", ""),
        ("captum fp32", f"completeness error {float((captum_error.abs() / change.abs()).max()):.2e}", ""),
        ("captum bf16", f"vs captum fp32: max rel diff "
                        f"{relative_difference(results['captum bf16'], results['captum']):.1e}", ""),
        ("ours fp32", f"vs captum: max rel diff {relative_difference(results['ours'], results['captum']):.1e}", ""),
        ("ours bf16", f"vs ours fp32: max rel diff {relative_difference(results['bf16'], results['ours']):.1e}, "
                      f"completeness error {float((ours.compute_convergence_delta(results['bf16'], 0.0, x, target=args.target).abs() / change.abs()).max()):.2e}", ""),
    ]
    median = {name: t.median for name, t in timings.items()}
    print(f"\n{args.clock} time, median of {repeats} round(s)")
    print(f"{'contender':<13} {'median s':>9} {'min s':>8} {'captum/it':>10} {'it/floor':>9}  check")
    for name, note, _ in rows:
        print(f"{name:<13} {median[name]:>9.2f} {min(timings[name].times):>8.2f} "
              f"{median['captum fp32'] / median[name]:>10.2f} {median[name] / median['model floor']:>9.2f}  {note}")
    print(f"\nfp32 ratio captum/ours {median['captum fp32'] / median['ours fp32']:.2f}, ours/floor "
          f"{median['ours fp32'] / median['model floor']:.3f}; bf16 ratio captum/ours-bf16 "
          f"{median['captum fp32'] / median['ours bf16']:.2f}")
    shape = f"BERT {args.layers}L {args.batch}x{args.tokens}"
    floor = median["model floor"]
    vs_fp32 = lambda key: relative_difference(results[key], results["captum"])  # noqa: E731
    write_rows(args.json, [
        row(f"IG fp32, {shape}, {args.steps} steps", f"captum {captum.__version__} IG", timings["captum fp32"],
            timings["ours fp32"], max_diff=vs_fp32("ours"), peer_dtype="float32", ours_dtype="float32",
            floor_s=floor, device=args.device),
        row(f"IG bf16 (autocast), {shape}, {args.steps} steps", f"captum {captum.__version__} IG under autocast",
            timings["captum bf16"], timings["ours bf16"],
            max_diff=relative_difference(results["bf16"], results["captum bf16"]), peer_dtype="bfloat16",
            ours_dtype="bfloat16", floor_s=floor, device=args.device,
            accuracy=f"vs captum fp32: ours {vs_fp32('bf16'):.1e}, captum bf16 {vs_fp32('captum bf16'):.1e}"),
        row(f"IG bf16 against fp32, {shape}, {args.steps} steps", f"captum {captum.__version__} IG fp32",
            timings["captum fp32"], timings["ours bf16"], max_diff=vs_fp32("bf16"), peer_dtype="float32",
            ours_dtype="bfloat16", floor_s=floor, kind="less-work", device=args.device,
            accuracy=f"ours bf16 vs captum fp32: max rel. diff {vs_fp32('bf16'):.1e}"),
    ])


def captum_autocast(captum_ig, x, device: str, common: dict):
    """captum's IG as a user runs it in bf16: under autocast (captum has no dtype argument)."""
    with torch.autocast(device, dtype=torch.bfloat16):
        return captum_ig.attribute(x, **common).float()

if __name__ == "__main__":
    main()
