"""Texts per second of a data-set job: the local engine, the Ray engine, and one in-memory call.

500 short texts through the embedded all-MiniLM-L6-v2 (zero-shot sentiment, labels positive /
negative), with saliency and with Integrated Gradients (n_steps=16):

- ``in-memory``: one ``Explainer.attribute(all_texts)`` call, what a user without jobs writes
  (everything in memory, nothing written, no resume); it is the reference of the outputs;
- ``local``: ``run_local`` (shards, atomic Parquet writes, manifest, per-row error capture);
- ``ray``: ``run_ray`` with 2 actors on a local Ray cluster started before the clock runs
  (each actor loads its own model: that start-up is part of the job and is timed).

The outputs of all three are checked to agree, then texts/s and the ratios are printed. Every
job is timed once, whole: five hundred texts are their own average. Run:
``python benchmarks/bench_jobs.py [--texts 500] [--actors 2] [--device cuda]``; ``--quick`` (48 texts,
saliency, one Ray actor) only proves that the three engines run and agree.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks._results import row, write_rows  # noqa: E402
from benchmarks._timing import interleaved  # noqa: E402
from saliency_fast.jobs import JobConfig, read_results, run_local, run_ray  # noqa: E402

LABELS = ("positive", "negative")
SUBJECTS = "the movie|this film|the plot|the acting|the soundtrack|the ending|the cast|every scene".split("|")
VERDICTS = "good|bad|great|terrible|boring|moving|slow|brilliant|awful|fun".split("|")
ADVERBS = "really|quite|incredibly|not|very|somewhat|truly".split("|")
TAILS = ("", " and i loved it", " and i hated it", ", sadly", " overall", " from start to finish")


def short_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} was {rng.choice(ADVERBS)} {rng.choice(VERDICTS)}{rng.choice(TAILS)}."
            for _ in range(n)]


def max_abs_diff(a: list, b: list) -> float:
    """Largest |a - b| over the score matrices of matching rows (NaN where both are NaN)."""
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
            return float("inf")
        if x.size:
            worst = max(worst, float(np.nanmax(np.abs(x - y), initial=0.0)))
    return worst


def in_memory(config: JobConfig, texts: list[str]) -> tuple[float, list]:
    from saliency_fast import Explainer
    from saliency_fast.hf.packaged_model import default_model

    started = time.perf_counter()
    explainer = Explainer(*default_model(), labels=list(config.labels), batch_size=config.batch_size,
                          device=config.device)
    results = explainer.attribute(texts, method=config.method, progress=False, **config.method_kwargs)
    seconds = time.perf_counter() - started
    print(f"  in-memory: {seconds:.1f} s, load average after {os.getloadavg()[0]:.1f}", flush=True)
    return seconds, [r.scores.float().numpy() for r in results]


def timed_job(engine, config: JobConfig, source: pathlib.Path, output: pathlib.Path, **kwargs) -> tuple[float, list]:
    started = time.perf_counter()
    summary = engine(config, source, output, progress=False, **kwargs)
    seconds = time.perf_counter() - started
    if not summary.ok or summary.row_errors:
        raise RuntimeError(f"{engine.__name__} did not finish cleanly: {summary}")
    print(f"  {engine.__name__}: {seconds:.1f} s, load average after {os.getloadavg()[0]:.1f}", flush=True)
    return seconds, read_results(output).column("scores").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="torch device of every contender (the Ray actors get one GPU each on cuda)")
    parser.add_argument("--quick", action="store_true", help="48 texts, shards of 16, saliency only, 1 Ray actor")
    parser.add_argument("--json", help="also write the rows for benchmarks/run_all.py here")
    args = parser.parse_args()
    if args.quick:  # proves the three engines run and agree; the texts/s of the full run are the numbers
        args.texts, args.shard_size, args.actors = 48, 16, 1
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    texts = short_texts(args.texts)
    rows = []
    methods = {"saliency": {}} if args.quick else {"saliency": {}, "integrated_gradients": {"n_steps": 16}}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"{args.texts} texts, embedded all-MiniLM-L6-v2 zero-shot, batch {args.batch_size}, shards of "
          f"{args.shard_size}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"device {args.device}, Ray actors {args.actors}; load average "
          f"{os.getloadavg()[0]:.1f} (a shared machine's other work slows every contender)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(tmp, "texts.jsonl")
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        for method, kwargs in methods.items():
            config = JobConfig(labels=LABELS, method=method, method_kwargs=kwargs, batch_size=args.batch_size,
                               shard_size=args.shard_size, device=args.device)
            out = {}  # one run each, in turn (a job's second run into the same folder would only resume)
            timings = interleaved({
                "in-memory": lambda: out.update(memory=in_memory(config, texts)),
                "local": lambda: out.update(local=timed_job(run_local, config, source,
                                                            pathlib.Path(tmp, f"local-{method}"))),
                "ray": lambda: out.update(ray=timed_job(run_ray, config, source, pathlib.Path(tmp, f"ray-{method}"),
                                                        actors=args.actors)),
            }, runs=1, warmup=0, device=args.device)
            (t_mem, ref), (t_local, local), (t_ray, ray_out) = out["memory"], out["local"], out["ray"]
            d_local, d_ray = max_abs_diff(local, ref), max_abs_diff(ray_out, ref)
            scale = max(float(np.nanmax(np.abs(s))) for s in ref)
            if max(d_local, d_ray) > 1e-4 * scale:
                raise RuntimeError(f"{method}: outputs disagree (local {d_local:.2e}, ray {d_ray:.2e}, scale {scale:.2e})")
            n = len(texts)
            print(f"{method:22s} in-memory {n / t_mem:7.1f} texts/s | local {n / t_local:7.1f} texts/s "
                  f"({t_mem / t_local:.2f}x in-memory) | ray x{args.actors} {n / t_ray:7.1f} texts/s "
                  f"({t_local / t_ray:.2f}x local) | max |diff| vs in-memory: local {d_local:.1e}, ray {d_ray:.1e}",
                  flush=True)
            steps = f" n_steps={kwargs['n_steps']}" if kwargs else ""
            workload = f"{n} texts MiniLM zero-shot {method}{steps}"
            for label, peer, peer_key, ours_key, diff in (
                    ("local job", "in-memory Explainer.attribute", "in-memory", "local", d_local),
                    (f"Ray job, {args.actors} actors", "local job", "local", "ray", d_ray)):
                found = row(f"{workload}: {label}", peer, timings[peer_key], timings[ours_key],
                            max_diff=diff / scale, peer_dtype="float32", ours_dtype="float32", floor_s=None,
                            kind="design", device=args.device)
                found["note"] = "our own configurations (what the job machinery costs), no external peer"
                rows.append(found)
    write_rows(args.json, rows)
    ray.shutdown()


if __name__ == "__main__":
    main()
