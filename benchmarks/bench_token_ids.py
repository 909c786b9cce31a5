"""Layer attribution fed token ids (captum's text pattern) vs the float path, in one process.

Model: all-MiniLM-L6-v2 (the real weights) with a random 2-class head. Inputs: ``--batch`` texts of
``--tokens`` random token ids, a [PAD] baseline, ``--steps`` Gauss-Legendre steps. The attributed
layer is ``model.bert.embeddings`` (word + position + type embeddings and LayerNorm). Contenders:

- ``captum, token ids``: ``captum.attr.LayerIntegratedGradients(f_ids, embeddings)`` on the ids;
- ``ours, token ids``: ``saliency_fast.LayerIntegratedGradients(f_ids, embeddings)`` on the ids;
- ``ours, float path``: the same layer fed ``inputs_embeds`` (the word embeddings looked up
  beforehand): what a user had to write before token ids were accepted.

All three compute the same quantity; the outputs are checked against captum's before timing.
Rounds are interleaved (``--repeats``), medians reported. Rows for ``benchmarks/run_all.py``:
captum vs ours on ids, and ours' float path vs ours on ids (ratio 1 = the same speed).

    python benchmarks/bench_token_ids.py            # 4 x 64 tokens, 32 steps, 5 rounds
    python benchmarks/bench_token_ids.py --quick    # 2 x 16 tokens, 8 steps, 7 rounds
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import captum
import captum.attr
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import saliency_fast  # noqa: E402
from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved  # noqa: E402
from tests.tiny_models import minilm_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, help="texts (default 4; --quick: 2)")
    parser.add_argument("--tokens", type=int, help="tokens per text (default 64; --quick: 16)")
    parser.add_argument("--steps", type=int, help="Gauss-Legendre steps (default 32; --quick: 8)")
    parser.add_argument("--repeats", type=int, help="interleaved timed rounds (default 5; --quick: 7)")
    parser.add_argument("--quick", action="store_true", help="a small workload, more rounds")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    defaults = dict(batch=2, tokens=16, steps=8, repeats=7) if args.quick else dict(batch=4, tokens=64, steps=32,
                                                                                      repeats=5)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(minilm_path()), num_labels=2).eval().to(device)
    embeddings = model.bert.embeddings
    ids = torch.randint(1000, 29000, (args.batch, args.tokens), device=device)
    ids[:, 0], ids[:, -1] = 101, 102
    baseline = torch.zeros_like(ids)
    baseline[:, 0], baseline[:, -1] = 101, 102
    with torch.no_grad():
        embeds, base_embeds = embeddings.word_embeddings(ids), embeddings.word_embeddings(baseline)
    common = dict(target=1, n_steps=args.steps, method="gausslegendre")

    def from_ids(x):
        return model(input_ids=x).logits

    def from_embeds(x):
        return model(inputs_embeds=x).logits

    contenders = {
        "captum, token ids": lambda: captum.attr.LayerIntegratedGradients(from_ids, embeddings).attribute(
            ids, baselines=baseline, **common),
        "ours, token ids": lambda: saliency_fast.LayerIntegratedGradients(from_ids, embeddings).attribute(
            ids, baselines=baseline, **common),
        "ours, float path": lambda: saliency_fast.LayerIntegratedGradients(from_embeds, embeddings).attribute(
            embeds, baselines=base_embeds, **common),
    }
    outputs = {name: fn().detach() for name, fn in contenders.items()}
    reference = outputs["captum, token ids"]
    scale = float(reference.abs().max())
    diffs = {name: float((out - reference).abs().max()) / scale for name, out in outputs.items()}
    for name, diff in diffs.items():
        if diff > 1e-4:
            raise SystemExit(f"{name} differs from captum by {diff:.2e} of the largest attribution")
    timings = interleaved(contenders, runs=args.repeats, warmup=1, device=device)

    workload = f"layer IG on token ids, MiniLM-L6 embeddings ({args.batch}x{args.tokens}, {args.steps} steps)"
    ours = timings["ours, token ids"]
    rows = [
        row(workload, f"captum {captum.__version__} LayerIntegratedGradients, token ids", timings["captum, token ids"],
            ours, max_diff=diffs["ours, token ids"], peer_dtype="float32", ours_dtype="float32", floor_s=None,
            device=args.device),
        # our own other entry point: the times side by side, not a speed claim over a peer
        row(workload, "ours, float path (inputs_embeds through the same layer)", timings["ours, float path"], ours,
            max_diff=float((outputs["ours, float path"] - outputs["ours, token ids"]).abs().max()) / scale,
            peer_dtype="float32", ours_dtype="float32", floor_s=None, kind="design", device=args.device),
    ]
    print(f"{workload}; {args.device}, torch threads {torch.get_num_threads()}, {args.repeats} interleaved rounds, "
          "median")
    for name, timing in timings.items():
        print(f"  {name:<20} {timing.median:8.3f} s   max diff from captum {diffs[name]:.1e}")
    for found in rows:
        print(f"  ours on ids vs {found['peer']}: {found['ratio']:.2f}x")
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
