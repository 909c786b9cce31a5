"""Native IG kernels vs the fastest plain-PyTorch composition and vs the memory limit.

Case: m=50 steps of gradients over a batch of 8 x 128 tokens x 768 dims (``--steps``, ``--shape``),
in float32, bfloat16 and float16, at 1 and 2 threads (``--threads``). Contenders, all timed in
one process on the same inputs with the same warm-ups and runs, interleaved (benchmarks/_timing.py):

- ``ig_accumulate`` (every reduce): ours is ``torch.ops.saliency_fast.ig_accumulate``; the peer is
  what a user writes, ``torch.tensordot(weights, grads, dims=1) * (x - baseline)`` then the
  reduction (the weights cast to the gradients' dtype once, outside the timing); the floor is
  ``grads.sum()``, a plain read of the same gradient bytes. ``read share`` = floor / ours: the
  fraction of the machine's plain-sum read bandwidth the fused kernel reaches.
- ``ig_interpolate``: into a buffer the caller holds (``out=``): ours against
  ``torch.addcmul(baseline, alphas, x - baseline, out=buf)``, floor ``buf.fill_(0)``; and with a
  fresh output each call: ours against ``torch.addcmul`` without ``out``, floor
  ``torch.empty(...).fill_(0)`` (which pays the page faults of fresh memory, as both sides do).
  ``write share`` = floor / ours.

Every output is compared with the peer's, and both with a float64 evaluation (the ``accuracy``).

    python benchmarks/bench_ops.py                   # 1 and 2 threads, 3 dtypes, all reduces
    python benchmarks/bench_ops.py --quick           # 8 steps x (2, 64, 768), 3 runs, reduces none and l2
    python benchmarks/bench_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import gbps, interleaved  # noqa: E402
from saliency_fast import _native, ops  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REDUCES = ("none", "sum", "l2", "abs_sum")


def native(name: str):
    return getattr(torch.ops.saliency_fast, name)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def reduce_plain(attr: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "none":
        return attr
    if reduce == "sum":
        return attr.sum(-1)
    if reduce == "l2":
        return torch.linalg.vector_norm(attr, dim=-1)
    return attr.abs().sum(-1)


class Inputs:
    """One dtype's inputs, made once (the 150 MiB of float32 gradients take a while to draw)."""

    def __init__(self, steps: int, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> None:
        gen = torch.Generator().manual_seed(0)
        self.grads = torch.randn((steps, *shape), generator=gen).to(device, dtype)
        self.x = torch.randn(shape, generator=gen).to(device, dtype)
        self.baseline = torch.randn(shape, generator=gen).to(device, dtype)
        self.weights = torch.rand(steps, generator=gen).to(device)  # float32, as the methods pass them
        self.alphas = torch.linspace(0, 1, steps, device=device)
        self.dtype = dtype


def shares(t: dict) -> tuple[float, float]:
    """The floor's time over ours: by wall-clock medians, and by this process's CPU-time medians
    (which time spent waiting for a core on a busy machine does not inflate)."""
    return t["floor"].median / t["ours"].median, t["floor"].cpu_median / t["ours"].cpu_median


def accumulate_row(inp: Inputs, reduce: str, runs: int, warmup: int, device: str, label: str) -> dict:
    grads, x, b, w = inp.grads, inp.x, inp.baseline, inp.weights
    w_cast = w.to(inp.dtype)
    ours = lambda: native("ig_accumulate").default(grads, w, x, b, reduce, None)  # noqa: E731
    peer = lambda: reduce_plain(torch.tensordot(w_cast, grads, dims=1) * (x - b), reduce)  # noqa: E731
    floor = lambda: grads.sum()  # noqa: E731
    exact = reduce_plain(torch.tensordot(w.double(), grads.double(), dims=1) * (x - b).double(), reduce)
    ours_out, peer_out = ours(), peer()
    t = interleaved({"ours": ours, "peer": peer, "floor": floor}, runs=runs, warmup=warmup, device=device)
    share, cpu_share = shares(t)
    print(f"ig_accumulate {label:8} {reduce:7} threads {torch.get_num_threads()}: ours {t['ours'].median * 1e3:7.2f} ms"
          f"  peer {t['peer'].median * 1e3:7.2f} ms  sum {t['floor'].median * 1e3:7.2f} ms"
          f"  ratio {t['peer'].median / t['ours'].median:5.2f}x  read share {100 * share:4.0f} % (CPU time "
          f"{100 * cpu_share:3.0f} %)  ({gbps(grads.numel() * grads.element_size(), t['ours'].median):.1f} GB/s)",
          flush=True)
    return row(f"ig_accumulate {label} reduce={reduce}, {grads.shape[0]} steps x {tuple(x.shape)} ({device})",
               "plain PyTorch: tensordot(weights, grads), * (x - b), reduce", t["peer"], t["ours"],
               max_diff=rel_diff(ours_out, peer_out), peer_dtype=label, ours_dtype=label, floor_s=t["floor"].median,
               accuracy=f"read share {100 * share:.0f} % of grads.sum() (CPU time {100 * cpu_share:.0f} %); "
                        f"vs float64: ours {rel_diff(ours_out, exact):.1e}, "
                        f"peer {rel_diff(peer_out, exact):.1e}", device=device)


def interpolate_rows(inp: Inputs, runs: int, warmup: int, device: str, label: str) -> list[dict]:
    x, b, alphas = inp.x, inp.baseline, inp.alphas
    a_cast = alphas.to(inp.dtype).view(-1, *([1] * x.dim()))
    out_shape = (alphas.numel(), *x.shape)
    ours_buf = torch.empty(out_shape, dtype=inp.dtype, device=device)
    peer_buf = torch.empty_like(ours_buf)
    fill_buf = torch.empty_like(ours_buf)
    exact = b.double() + alphas.double().view_as(a_cast) * (x.double() - b.double())
    cases = {
        "into a buffer (out=)": (
            lambda: ops.ig_interpolate(x, b, alphas, out=ours_buf),
            lambda: torch.addcmul(b, a_cast, x - b, out=peer_buf),
            lambda: fill_buf.fill_(0), "torch.addcmul(b, alphas, x - b, out=buf)", "buf.fill_(0)"),
        "fresh output": (
            lambda: native("ig_interpolate").default(x, b, alphas),
            lambda: torch.addcmul(b, a_cast, x - b),
            lambda: torch.empty(out_shape, dtype=inp.dtype, device=device).fill_(0),
            "torch.addcmul(b, alphas, x - b)", "torch.empty(...).fill_(0)"),
    }
    rows = []
    for case, (ours, peer, floor, peer_name, floor_name) in cases.items():
        ours_out, peer_out = ours().clone(), peer().clone()
        t = interleaved({"ours": ours, "peer": peer, "floor": floor}, runs=runs, warmup=warmup, device=device)
        share, cpu_share = shares(t)
        print(f"ig_interpolate {label:8} {case:21} threads {torch.get_num_threads()}: ours "
              f"{t['ours'].median * 1e3:7.2f} ms  peer {t['peer'].median * 1e3:7.2f} ms  {floor_name} "
              f"{t['floor'].median * 1e3:7.2f} ms  ratio {t['peer'].median / t['ours'].median:5.2f}x"
              f"  write share {100 * share:4.0f} % (CPU time {100 * cpu_share:3.0f} %)", flush=True)
        rows.append(row(
            f"ig_interpolate {label} {case}, {alphas.numel()} steps x {tuple(x.shape)} ({device})",
            f"plain PyTorch: {peer_name}", t["peer"], t["ours"],
            max_diff=rel_diff(ours_out, peer_out), peer_dtype=label, ours_dtype=label, floor_s=t["floor"].median,
            accuracy=f"write share {100 * share:.0f} % of {floor_name} (CPU time {100 * cpu_share:.0f} %); "
                     f"vs float64: ours {rel_diff(ours_out, exact):.1e}, "
                     f"peer {rel_diff(peer_out, exact):.1e}", device=device))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true",
                        help="8 steps x (2, 64, 768), 3 runs; reduces none and l2; the current threads (proves the "
                             "rows run and match, too small to say anything about bandwidth)")
    parser.add_argument("--threads", default="1,2", help="comma-separated CPU thread counts (default 1,2)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {list(DTYPES)}")
    parser.add_argument("--steps", type=int, help="steps of gradients (default 50, --quick 8)")
    parser.add_argument("--shape", help="x's shape, the last dim the embedding dim (default 8,128,768; "
                                        "--quick 2,64,768)")
    parser.add_argument("--runs", type=int, help="timed runs per contender (default 15, --quick 3)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here (benchmarks/run_all.py)")
    args = parser.parse_args()
    status = _native.status()
    if not (status.cuda if args.device == "cuda" else status.cpu):
        sys.exit(f"no native {args.device} kernels loaded ({status.reason}); build with `make setup`")
    runs = args.runs or (3 if args.quick else 15)
    warmup = 1 if args.quick else 3
    args.steps = args.steps or (8 if args.quick else 50)
    args.shape = args.shape or ("2,64,768" if args.quick else "8,128,768")
    reduces = ("none", "l2") if args.quick else REDUCES
    threads = [torch.get_num_threads()] if args.quick or args.device == "cuda" else \
        [int(t) for t in args.threads.split(",")]
    shape = tuple(int(s) for s in args.shape.split(","))
    print(f"device {args.device}, {args.steps} steps x {shape}, {runs} interleaved runs after {warmup} warm-ups")
    rows = []
    for label in args.dtypes.split(","):
        inp = Inputs(args.steps, shape, DTYPES[label], args.device)
        for count in threads:
            torch.set_num_threads(count)
            rows += [accumulate_row(inp, reduce, runs, warmup, args.device, label) for reduce in reduces]
            rows += interpolate_rows(inp, runs, warmup, args.device, label)
        del inp
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
