"""Run every benchmark of this repo and print one markdown table; write benchmarks/results.json.

    python benchmarks/run_all.py            # the full runs (tens of minutes on a laptop CPU)
    python benchmarks/run_all.py --quick    # every script's --quick mode (a few minutes on 2 cores)
    python benchmarks/run_all.py --only bench_dig.py --update   # rerun one, keep the others' rows

Each ``benchmarks/bench_*.py`` runs in its own process (as it would alone, so one benchmark's
threads, caches or memory never touch another's) with ``--json PATH``; it writes
``{"rows": [{"workload", "peer", "peer_s", "ours_s", "ratio", "max_diff", "floor_s"}, ...]}``
where ``ratio = peer_s / ours_s`` (above 1: we are faster), ``max_diff`` is the largest relative
difference of our outputs from the peer's and ``floor_s`` the model's own forward+backward time
for the same work where the script measures it. ``bench_ops.py`` writes its own row format (op,
dtype, native_ms, eager_ms), read here with the eager PyTorch reference as the peer. A script that
fails, has no ``--json`` option or is absent is listed under the table with the reason, never
silently dropped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
# the workloads the project benchmarks, in table order: (script, arguments of its quick mode)
BENCHMARKS = {
    "bench_ops.py": ["--quick"],
    "bench_methods.py": ["--quick", "--layers", "4", "--tokens", "32", "--steps", "16"],
    "bench_generation.py": ["--quick"],
    "bench_dig.py": ["--quick"],
    "bench_jobs.py": ["--texts", "200"],
    "bench_layer.py": ["--quick"],
}
COLUMNS = ("workload", "peer", "peer_s", "ours_s", "ratio", "max_diff", "floor_s")


def ops_rows(found: dict) -> list[dict]:
    """bench_ops.py's rows in the common schema (times in seconds; it checks outputs with
    assert_close before timing, so max_diff is not reported)."""
    return [{
        "workload": f"{r['op']} {r['dtype']}" + (f" reduce={r['reduce']}" if r.get("reduce") else "")
                    + f" ({found.get('device', 'cpu')})",
        "peer": "eager PyTorch reference", "peer_s": r["eager_ms"] / 1e3, "ours_s": r["native_ms"] / 1e3,
        "ratio": r["eager_ms"] / r["native_ms"], "max_diff": None, "floor_s": None,
    } for r in found["rows"]]


def run_one(script: str, extra: list[str], timeout_s: float) -> tuple[list[dict], str | None, float]:
    """``(rows, why not, seconds)`` of one benchmark script run in a child process."""
    path = HERE / script
    if not path.exists():
        return [], "not in this checkout", 0.0
    help_text = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, cwd=ROOT,
                               timeout=120).stdout
    if "--json" not in help_text:
        return [], "has no --json option (prints only)", 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, str(path), *extra, "--json", str(out)], capture_output=True,
                                  text=True, cwd=ROOT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [], f"timed out after {timeout_s:.0f} s", time.perf_counter() - start
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return [], f"exit status {done.returncode}: {tail[0][:200]}", seconds
        if not out.exists():
            return [], "wrote no --json file", seconds
        found = json.loads(out.read_text())
    rows = ops_rows(found) if script == "bench_ops.py" else found["rows"]
    return [{**{c: r.get(c) for c in COLUMNS}, "script": script} for r in rows], None, seconds


def _kept(previous: dict, rerun: list[str], quick: bool) -> tuple[list[dict], dict, dict]:
    """Rows, skip reasons and times of the scripts not in ``rerun`` from an earlier results file."""
    if previous.get("quick") != quick:
        sys.exit(f"--update: the existing results are from a {'quick' if previous.get('quick') else 'full'} run; "
                 "rerun everything or match its mode")
    keep = lambda script: script in BENCHMARKS and script not in rerun  # noqa: E731
    return ([r for r in previous["rows"] if keep(r["script"])],
            {s: why for s, why in previous.get("skipped", {}).items() if keep(s)},
            {s: sec for s, sec in previous.get("script_seconds", {}).items() if keep(s)})


def _cell(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "s":
        return f"{value * 1e3:.2f} ms" if value < 0.1 else f"{value:.2f} s"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "e":
        return f"{value:.1e}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict]) -> str:
    kinds = {"peer_s": "s", "ours_s": "s", "ratio": "x", "max_diff": "e", "floor_s": "s"}
    lines = ["| workload | peer | peer time | our time | ratio | max difference | model floor |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[c], kinds.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick mode (a few minutes)")
    parser.add_argument("--only", help="comma-separated script names (default: all)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per script")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results.json")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of the scripts not run from the existing --out file (same mode only)")
    args = parser.parse_args()
    scripts = list(BENCHMARKS) if args.only is None else args.only.split(",")
    unknown = [s for s in scripts if s not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown scripts {unknown}; known: {list(BENCHMARKS)}")
    rows, skipped, seconds = [], {}, {}
    if args.update and args.out.exists():
        rows, skipped, seconds = _kept(json.loads(args.out.read_text()), scripts, args.quick)
    for script in scripts:
        print(f"running {script} ...", file=sys.stderr, flush=True)
        found, why, seconds[script] = run_one(script, BENCHMARKS[script] if args.quick else [], args.timeout)
        rows += found
        if why:
            skipped[script] = why
    rows.sort(key=lambda r: list(BENCHMARKS).index(r["script"]))  # table order, also after --update
    about = machine()
    print(f"Machine: {about['processor']}, {about['cpu_threads']} torch threads, GPU {about['gpu'] or 'none'}, "
          f"torch {about['torch']}, {about['platform']}; mode: {'quick' if args.quick else 'full'}\n")
    print(markdown(rows))
    for script, why in skipped.items():
        print(f"\n- {script}: {why}")
    args.out.write_text(json.dumps({"machine": about, "quick": args.quick, "rows": rows, "skipped": skipped,
                                    "script_seconds": seconds}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
