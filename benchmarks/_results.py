"""The rows every benchmark writes: one schema, with provenance, for results.json and the README.

A benchmark script builds its rows with :func:`row` from the :class:`~benchmarks._timing.Timing`
of each side and writes them with :func:`write_rows` when given ``--json PATH``;
``benchmarks/run_all.py`` collects them and ``benchmarks/readme_tables.py`` renders the README.

    timings = interleaved({"peer": run_peer, "ours": run_ours}, runs=5, warmup=1)
    rows.append(row("IG fp32, BERT 12L 4x64, 50 steps", "captum 0.9.0 IG fp32", timings["peer"],
                    timings["ours"], max_diff=1e-7, peer_dtype="float32", ours_dtype="float32",
                    floor_s=floor.median))
    write_rows(args.json, rows)

Kinds of row (``kind``), each its own README table:

- ``equal-work``: the same model, inputs, precision and quantity on both sides (the ratio table).
- ``less-work``: ours does less than the peer (bf16 against a float32 peer, ``n_steps="auto"``
  against fixed steps, all layers in one pass); ``accuracy`` says what that costs.
- ``design``: the two sides do different work, or the "peer" is our own other configuration; the
  times are shown, the ratio is not a speed claim and stays out of the ratio tables.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess

import torch

from benchmarks._timing import Timing

ROOT = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("equal-work", "less-work", "design")
FIELDS = ("workload", "peer", "peer_s", "ours_s", "ratio", "max_diff", "peer_dtype", "ours_dtype", "peer_runs",
          "ours_runs", "peer_warmup", "ours_warmup", "floor_s", "kind", "accuracy", "device", "threads", "date",
          "commit")


def commit() -> str:
    """The checkout's HEAD, with ``-dirty`` when tracked files differ from it ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a reader needs to repeat a run: CPU model, cores, torch threads, torch build, GPU."""
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def row(workload: str, peer: str, peer_time: Timing, ours_time: Timing, *, max_diff: float | None,
        peer_dtype: str, ours_dtype: str, floor_s: float | None, kind: str = "equal-work",
        accuracy: str | None = None, device: str = "cpu") -> dict:
    """One results row. ``max_diff``: largest relative difference of our output from the peer's
    (None when the outputs are different quantities); ``floor_s``: the same model's plain forward
    (+ backward) on the same inputs, or for an op the plain read / write of the same bytes;
    ``accuracy``: required for ``less-work`` rows (what each side reaches against float64/float32
    or the completeness error)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "less-work" and not accuracy:
        raise ValueError(f"a less-work row must say the accuracy it reaches ({workload!r})")
    return {
        "workload": workload, "peer": peer, "peer_s": peer_time.median, "ours_s": ours_time.median,
        "ratio": peer_time.median / ours_time.median, "max_diff": max_diff, "peer_dtype": peer_dtype,
        "ours_dtype": ours_dtype, "peer_runs": peer_time.runs, "ours_runs": ours_time.runs,
        "peer_warmup": peer_time.warmup, "ours_warmup": ours_time.warmup, "floor_s": floor_s, "kind": kind,
        "accuracy": accuracy, "device": device, "threads": torch.get_num_threads(), "date": today(),
        "commit": commit(),
    }


def write_rows(path: str | os.PathLike | None, rows: list[dict], **extra) -> None:
    """Write ``{"machine", "rows", **extra}`` to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    for found in rows:
        missing = [f for f in FIELDS if f not in found]
        if missing:
            raise ValueError(f"row {found.get('workload')!r} lacks {missing}")
    pathlib.Path(path).write_text(json.dumps({"machine": machine(), "rows": rows, **extra}, indent=2))
