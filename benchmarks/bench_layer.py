"""Layer IG over every block of a 6-layer model: saliency_fast vs captum, in one process.

Models (both 6 blocks): all-MiniLM-L6-v2 (the real weights, hidden 384) with a random 2-class
head, and a random 6-layer GPT-2 (hidden 768, next-token logit at the last position). Inputs:
``--batch`` texts of ``--tokens`` random tokens, zero baseline, ``--steps`` Gauss-Legendre steps,
the same ``internal_batch_size`` for everyone. Contenders, each producing one attribution map per
block:

- ``captum LIG per layer``: ``captum.attr.LayerIntegratedGradients`` run once per block (the way
  to get every block's map with captum);
- ``ours all blocks, input path``: ``LayerIntegratedGradients(f, blocks, path="inputs")``, what
  ``layers="all"`` runs: one forward + backward per batch of path points for all blocks. This is
  the input-path quantity (``(h(x) - h(b)) * int dF/dh(b + a (x - b)) da``, see
  ``saliency_fast.methods.layer``), not captum's straight line between activations, so its outputs
  are checked against the same quantity computed by captum: ``InternalInfluence`` times
  ``LayerActivation(x) - LayerActivation(b)``, once per block (timed too, as a second peer);
- ``ours per layer, captum's path``: ``LayerIntegratedGradients(f, block)`` (``path="layer"``) once
  per block, checked against captum's LayerIntegratedGradients (same quantity);
- ``model floor``: ``steps`` points x one forward + backward to the embeddings, the inputs built
  beforehand: the least any single IG pass costs.

Contenders run interleaved, ``--repeats`` rounds, median reported.

    python benchmarks/bench_layer.py            # both models, 3 rounds
    python benchmarks/bench_layer.py --quick    # MiniLM only, 1 round
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import captum.attr
import torch
import transformers
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import saliency_fast  # noqa: E402
from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved  # noqa: E402
from saliency_fast.methods import quadrature  # noqa: E402
from tests.tiny_models import minilm_path  # noqa: E402


class MiniLMLogits(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds):
        return self.model(inputs_embeds=embeds).logits

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.bert.encoder.layer)


class GPT2NextLogits(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeds):
        return self.model(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1]

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.transformer.h)


def build(name: str, batch: int, tokens: int, seed: int = 0, device: str = "cpu"):
    """``(forward, embeddings, target)`` of the named 6-block model, on ``device``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if name == "minilm":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(str(minilm_path()), num_labels=2)
        ids = torch.randint(1000, model.config.vocab_size, (batch, tokens), generator=generator)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        forward, target = MiniLMLogits(model.eval()), 1
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=6)).eval()
        ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=generator)
        forward, target = GPT2NextLogits(model), 464
    forward.to(device)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids.to(device))
    return forward, embeds, target


def relative_difference(ours, theirs) -> float:
    """max |ours - theirs| / max |theirs| over the blocks' maps."""
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(ours, theirs))
    return diff / max(float(b.double().abs().max()) for b in theirs)


def model_floor(forward, x: torch.Tensor, target: int, steps: int, chunk_steps: int):
    alphas, _ = quadrature.gausslegendre(steps)
    chunks = [torch.cat([a * x for a in alphas[i : i + chunk_steps].tolist()]) for i in range(0, steps, chunk_steps)]

    def run():
        for p in forward.parameters():
            p.requires_grad_(False)
        try:
            for chunk in chunks:
                leaf = chunk.requires_grad_(True)
                torch.autograd.grad(forward(leaf)[:, target].sum(), leaf)
                leaf.requires_grad_(False)
        finally:
            for p in forward.parameters():
                p.requires_grad_(True)

    return run


def bench_model(name: str, args, repeats: int, warmup: int) -> list[dict]:
    forward, x, target = build(name, args.batch, args.tokens, device=args.device)
    blocks = forward.blocks
    b = torch.zeros_like(x)
    common = dict(target=target, n_steps=args.steps, method="gausslegendre",
                  internal_batch_size=args.internal_batch_size)
    results = {}

    def keep(key, fn):
        def run():
            results[key] = fn()
        return run

    def captum_influence_times_change():
        maps = []
        for block in blocks:
            influence = captum.attr.InternalInfluence(forward, block).attribute(x, b, **common)
            activation = captum.attr.LayerActivation(forward, block)
            maps.append(influence * (activation.attribute(x) - activation.attribute(b)))
        return maps

    contenders = {
        "model floor": model_floor(forward, x, target, args.steps, args.internal_batch_size // args.batch),
        "captum LIG per layer": keep("captum_lig", lambda: [
            captum.attr.LayerIntegratedGradients(forward, block).attribute(x, b, **common).detach()
            for block in blocks]),
        "ours all blocks, input path": keep("ours_all", lambda: saliency_fast.LayerIntegratedGradients(
            forward, blocks).attribute(x, b, path="inputs", **common)),
        "captum II x dh per layer": keep("captum_ii", captum_influence_times_change),
        "ours per layer, captum path": keep("ours_layer", lambda: [
            saliency_fast.LayerIntegratedGradients(forward, block).attribute(x, b, **common) for block in blocks]),
    }
    shape = f"{name} 6 blocks, {args.batch}x{args.tokens} tokens, {args.steps} steps"
    print(f"\n{shape}, internal_batch_size {args.internal_batch_size}, device {args.device}")
    timings = interleaved(contenders, runs=repeats, warmup=warmup, progress=True, device=args.device)
    median = {key: t.median for key, t in timings.items()}
    all_vs_ii = relative_difference(results["ours_all"], results["captum_ii"])
    layer_vs_lig = relative_difference(results["ours_layer"], results["captum_lig"])
    print(f"\n{'contender':<30} {'median s':>9} {'min s':>8} {'vs captum LIG':>14}  check")
    notes = {
        "ours all blocks, input path": f"vs captum II x dh: max rel diff {all_vs_ii:.1e}",
        "ours per layer, captum path": f"vs captum LIG: max rel diff {layer_vs_lig:.1e}",
    }
    for key in contenders:
        print(f"{key:<30} {median[key]:>9.2f} {min(timings[key].times):>8.2f} "
              f"{median['captum LIG per layer'] / median[key]:>13.2f}x  {notes.get(key, '')}")
    floor = median["model floor"]
    ours_all = timings["ours all blocks, input path"]
    other_path = row(f"layer IG, all blocks (layers='all', input path, one pass), {shape}",
                     "captum LayerIntegratedGradients once per layer", timings["captum LIG per layer"], ours_all,
                     max_diff=None, peer_dtype="float32", ours_dtype="float32", floor_s=floor, kind="design",
                     device=args.device)
    other_path["note"] = ("another quantity: captum integrates along each layer's own path, ours along the "
                          "input path (the next row compares the same quantity)")
    return [
        other_path,
        row(f"layer IG, all blocks (layers='all', input path, one pass), {shape}",
            "captum InternalInfluence x LayerActivation change once per layer", timings["captum II x dh per layer"],
            ours_all, max_diff=all_vs_ii, peer_dtype="float32", ours_dtype="float32", floor_s=floor,
            kind="less-work", accuracy=f"the same quantity, max rel. diff {all_vs_ii:.1e}: all 6 blocks from one "
                                       "pass against one pass per block", device=args.device),
        row(f"layer IG per block (captum's path), {shape}", "captum LayerIntegratedGradients once per layer",
            timings["captum LIG per layer"], timings["ours per layer, captum path"], max_diff=layer_vs_lig,
            peer_dtype="float32", ours_dtype="float32", floor_s=floor, device=args.device),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only, one timing round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="minilm,gpt2", help="comma-separated: minilm, gpt2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where models and inputs live")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    repeats, warmup = (1, 0) if args.quick else (args.repeats, 1)
    models = ["minilm"] if args.quick else args.models.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {saliency_fast.info()['backend']}")
    write_rows(args.json, [found for name in models for found in bench_model(name, args, repeats, warmup)])


if __name__ == "__main__":
    main()
