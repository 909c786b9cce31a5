"""Where the time of one generation IG run goes, and the matmul rates that set its floor.

Profiles ``attribute_generation(..., method="integrated_gradients")`` on the Llama-architecture model
of :mod:`bench_generation` (16 prompt + 16 forced tokens, 16 steps, ``unk`` baseline, ``prob``) in
float32 and with bf16 autocast (one warm-up, then one profiled run each, ``torch.profiler``), prints
the ops that took the most CPU time and the share of the matrix products, then measures this CPU's
``torch.matmul`` rate in float32 and bfloat16 on the shapes the pass runs (rows x 768 @ 768 x 2048
and back), which bound any IG at this size: both inseq and we must run one backward per target,
point and prefix row through those products.

    python benchmarks/profile_generation.py --threads 1
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_generation import CASES, build, ours, texts  # noqa: E402



def profile_run(explainer, prompt, full, dtype, top: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    kwargs = dict(n_steps=16, baseline="unk", dtype=dtype)
    ours(explainer, prompt, full, "integrated_gradients", "prob", **kwargs)  # warm-up
    start = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = ours(explainer, prompt, full, "integrated_gradients", "prob", **kwargs)
    cpu = time.process_time() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::bmm", "aten::addmm",
                                                                      "aten::baddbmm", "mkldnn::_linear"))
    name = "float32" if dtype is None else str(dtype).replace("torch.", "")
    print(f"\nIG {name}: {cpu:.2f} s CPU, engine {result.metadata['engine']['name']}; "
          f"matrix products {100 * matmul / total:.0f} % of the profiled self time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    return cpu


def matmul_rates(rows: int, repeats: int) -> None:
    print(f"\ntorch.matmul, {rows} rows, {torch.get_num_threads()} thread(s), per CPU second:")
    for dtype in (torch.float32, torch.bfloat16):
        for k, n in ((768, 2048), (2048, 768), (768, 768)):
            a, b = torch.randn(rows, k).to(dtype), torch.randn(k, n).to(dtype)
            torch.matmul(a, b)
            start = time.process_time()  # CPU time: waiting for a core on a shared machine does not count
            for _ in range(repeats):
                torch.matmul(a, b)
            seconds = (time.process_time() - start) / repeats
            print(f"  {str(dtype):15} [{rows} x {k}] @ [{k} x {n}]: {2 * rows * k * n / seconds / 1e9:6.1f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import saliency_fast

    model, tok = build(arch="llama")
    explainer = saliency_fast.Explainer(model, tok)
    prompt, full = texts(*CASES["16+16"], vocab=model.config.vocab_size)
    for dtype in (None, torch.bfloat16):
        profile_run(explainer, prompt, full, dtype, args.top)
    matmul_rates(args.rows, args.repeats)


if __name__ == "__main__":
    main()
