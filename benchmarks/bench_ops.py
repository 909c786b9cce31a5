"""Native IG kernels vs the eager PyTorch composition, in one process on the same inputs.

The eager composition is ``saliency_fast.reference`` (what the ops compute, written with torch
ops: ``(grads * w).sum(0) * (x - b)`` then the reduction). Case: m=50 steps, batch 8, 128 tokens,
dim 768; ``ig_accumulate`` in float32 and bfloat16 with reduce ``none`` and ``l2``, and
``ig_interpolate``. Outputs are compared before timing. Printed per case: median times, the
eager/native ratio, the native op's achieved GB/s (bytes it must read and write, once) and that
as a share of the measured copy bandwidth (``copy_`` of a 256 MiB tensor into a preallocated one).

Targets on CPU: ``ig_accumulate`` >= 2x the eager composition and >= 50 % of copy bandwidth.
``ig_interpolate`` writes a fresh m-times-larger output, so its floor is allocating and first
touching that memory (page faults): the ``fill`` column times ``torch.empty(...).fill_(0)`` of it.

    python benchmarks/bench_ops.py              # CPU, all cases
    python benchmarks/bench_ops.py --quick      # fewer repeats
    python benchmarks/bench_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import copy_bandwidth, gbps, median_time  # noqa: E402
from saliency_fast import _native, ops, reference  # noqa: E402,F401  (ops registers autograd/fake kernels)

STEPS, BATCH, TOKENS, DIM = 50, 8, 128, 768
TOLERANCES = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}


def native(name: str):
    return getattr(torch.ops.saliency_fast, name).default


def inputs(dtype: torch.dtype, device: str):
    gen = torch.Generator().manual_seed(0)
    shape = (BATCH, TOKENS, DIM)
    grads = torch.randn((STEPS, *shape), generator=gen).to(device, dtype)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    baseline = torch.randn(shape, generator=gen).to(device, dtype)
    weights = torch.rand(STEPS, generator=gen).to(device)
    return grads, weights, x, baseline


def bench_accumulate(dtype, reduce, device, repeats):
    grads, weights, x, baseline = inputs(dtype, device)
    fast = lambda: native("ig_accumulate")(grads, weights, x, baseline, reduce, None)  # noqa: E731
    eager = lambda: reference.ig_accumulate(grads, weights, x, baseline, reduce)  # noqa: E731
    torch.testing.assert_close(fast(), eager(), **TOLERANCES[dtype])
    t_fast = median_time(fast, repeats=repeats, device=device)
    t_eager = median_time(eager, repeats=max(1, repeats // 3), warmup=1, device=device)
    out_numel = x.numel() if reduce == "none" else x.numel() // DIM
    nbytes = (grads.numel() + 2 * x.numel() + out_numel) * x.element_size()
    return {"op": "ig_accumulate", "dtype": str(dtype).removeprefix("torch."), "reduce": reduce,
            "native_ms": 1e3 * t_fast, "eager_ms": 1e3 * t_eager, "native_gbps": gbps(nbytes, t_fast)}


def bench_interpolate(dtype, device, repeats):
    _, weights, x, baseline = inputs(dtype, device)
    alphas = weights  # any STEPS values in [0, 1)
    fast = lambda: native("ig_interpolate")(x, baseline, alphas)  # noqa: E731
    eager = lambda: reference.ig_interpolate(x, baseline, alphas)  # noqa: E731
    torch.testing.assert_close(fast(), eager(), **TOLERANCES[dtype])
    t_fast = median_time(fast, repeats=repeats, device=device)
    t_eager = median_time(eager, repeats=max(1, repeats // 3), warmup=1, device=device)
    fill = lambda: torch.empty((STEPS, *x.shape), dtype=dtype, device=device).fill_(0)  # noqa: E731
    t_fill = median_time(fill, repeats=repeats, device=device)
    nbytes = (STEPS + 2) * x.numel() * x.element_size()
    return {"op": "ig_interpolate", "dtype": str(dtype).removeprefix("torch."), "reduce": "-",
            "native_ms": 1e3 * t_fast, "eager_ms": 1e3 * t_eager, "native_gbps": gbps(nbytes, t_fast),
            "fill_ms": 1e3 * t_fill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer timed repeats")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here")
    args = parser.parse_args()
    status = _native.status()
    if not (status.cuda if args.device == "cuda" else status.cpu):
        sys.exit(f"no native {args.device} kernels loaded ({status.reason}); build with `make setup`")
    repeats = 5 if args.quick else 15

    copy = copy_bandwidth(device=args.device) / 1e9
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, copy bandwidth {copy:.1f} GB/s")
    rows = [bench_accumulate(dtype, reduce, args.device, repeats)
            for dtype in (torch.float32, torch.bfloat16) for reduce in ("none", "l2")]
    rows += [bench_interpolate(dtype, args.device, repeats) for dtype in (torch.float32, torch.bfloat16)]

    header = f"{'op':15} {'dtype':9} {'reduce':6} {'native ms':>10} {'eager ms':>10} {'ratio':>7} {'GB/s':>7} {'% copy':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        row["ratio"] = row["eager_ms"] / row["native_ms"]
        row["copy_share"] = row["native_gbps"] / copy
        line = (f"{row['op']:15} {row['dtype']:9} {row['reduce']:6} {row['native_ms']:10.2f} {row['eager_ms']:10.2f} "
                f"{row['ratio']:6.2f}x {row['native_gbps']:7.2f} {100 * row['copy_share']:6.0f}%")
        if "fill_ms" in row:
            line += f"   (fresh-output fill floor {row['fill_ms']:.2f} ms)"
        print(line)

    accumulate = [r for r in rows if r["op"] == "ig_accumulate"]
    if args.device == "cpu":
        met = all(r["ratio"] >= 2 and r["copy_share"] >= 0.5 for r in accumulate)
        print(f"CPU targets for ig_accumulate (>= 2x eager, >= 50 % copy bandwidth): {'met' if met else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "copy_gbps": copy, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
