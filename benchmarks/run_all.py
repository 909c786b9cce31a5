"""Run every benchmark of this repo, write benchmarks/results.json and print the README tables.

    python benchmarks/run_all.py                  # the full runs (each under 10 minutes, ~40-55 in all here)
    python benchmarks/run_all.py --quick          # every script's quick mode (90 s on the quiet 2-core VM)
    python benchmarks/run_all.py --device cuda    # every row on the GPU (every script takes --device)
    python benchmarks/run_all.py --only bench_dig.py --update   # rerun one, keep the other rows
    python benchmarks/readme_tables.py --write    # then regenerate the README tables from results.json

Every ``benchmarks/bench_*.py`` is run, each in its own process (as it would run alone, so one
benchmark's threads, caches or memory never touch another's), with ``--json PATH`` (and
``--quick`` / ``--device cuda`` when asked). A new benchmark needs no entry here: it takes those
options and writes its rows with ``benchmarks._results.row`` / ``write_rows`` (see that module
for the schema and the kinds of row). A script that fails, lacks an option, writes rows without
the schema's fields, or is absent is listed with the reason, never silently dropped. Each script's
seconds are printed as it ends and kept in the results (``script_seconds``).

``--quick`` proves that every script runs and that its outputs match the peer's; its sizes are too
small for the ratios to mean anything (the README tables come from a full run, and
readme_tables.py refuses a quick one), so it runs two scripts at a time, one thread each
(``--parallel``). A full run times one script at a time.

Rows carry their own date, commit, device and thread count, so ``--update`` may keep rows of
other days beside the rerun ones: the README shows each row's date.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))

from benchmarks._results import FIELDS, machine  # noqa: E402

# table order of the scripts known today; a bench_*.py not named here runs after them
ORDER = ("bench_ops.py", "bench_methods.py", "bench_generation.py", "bench_dig.py", "bench_jobs.py",
         "bench_layer.py")
# extra arguments of a script's --quick mode beyond --quick itself (smaller than the script's own
# quick sizes where those are meant for a reader's first look rather than for the 2-minute sweep)
QUICK_EXTRA = {
    "bench_methods.py": ["--layers", "2", "--tokens", "16", "--steps", "8", "--batch", "2"],
    "bench_layer.py": ["--batch", "1", "--tokens", "8", "--steps", "4"],
    "bench_generation.py": ["--n-steps", "4"],
    "bench_perturbation.py": ["--texts", "2"],
    "bench_token_ids.py": ["--repeats", "2"],
    "bench_serve.py": ["--warmup-requests", "1"],
}


def scripts() -> list[str]:
    found = sorted(p.name for p in HERE.glob("bench_*.py"))
    return [s for s in ORDER if s in found] + [s for s in found if s not in ORDER]


def arguments(script: str, quick: bool, device: str) -> list[str]:
    extra = (["--quick"] + QUICK_EXTRA.get(script, [])) if quick else []
    return extra + (["--device", device] if device != "cpu" else [])


def run_one(script: str, extra: list[str], timeout_s: float) -> tuple[list[dict], str | None, float]:
    """``(rows, why not, seconds)`` of one benchmark script run in a child process."""
    path = HERE / script
    if not path.exists():
        return [], "not in this checkout", 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, str(path), *extra, "--json", str(out)], capture_output=True,
                                  text=True, cwd=ROOT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [], f"timed out after {timeout_s:.0f} s", time.perf_counter() - start
        seconds = time.perf_counter() - start
        if done.returncode != 0:  # argparse's "unrecognized arguments: --device cuda" lands here too
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return [], f"exit status {done.returncode}: {tail[0][:200]}", seconds
        if not out.exists():
            return [], "wrote no --json file", seconds
        found = json.loads(out.read_text())
    for r in found["rows"]:
        missing = [f for f in FIELDS if f not in r]
        if missing:
            return [], f"row {r.get('workload')!r} lacks {missing} (build rows with benchmarks._results.row)", seconds
    return [{**r, "script": script, "machine": found.get("machine")} for r in found["rows"]], None, seconds


def _kept(previous: dict, rerun: list[str], quick: bool, device: str) -> tuple[list[dict], dict, dict]:
    """Rows, skip reasons and times from an earlier results file that this run does not replace
    (other scripts, or the same scripts on another device)."""
    if previous.get("quick") != quick:
        sys.exit(f"--update: the existing results are from a {'quick' if previous.get('quick') else 'full'} run; "
                 "rerun everything or match its mode")
    replaced = lambda r: r.get("script") in rerun and r.get("device", "cpu") == device  # noqa: E731
    return ([r for r in previous["rows"] if not replaced(r)],
            {s: why for s, why in previous.get("skipped", {}).items() if s not in rerun},
            {s: sec for s, sec in previous.get("script_seconds", {}).items() if s not in rerun})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick mode (about 3 CPU minutes in all)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every row runs")
    parser.add_argument("--only", help="comma-separated script names (default: every bench_*.py)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per script")
    parser.add_argument("--parallel", type=int,
                        help="scripts run at once, each on one thread (default: 2 with --quick, whose times mean "
                             "nothing, else 1: a timed script runs alone)")
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results.json")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows this run does not replace from the existing --out file (same mode only)")
    args = parser.parse_args()
    known = scripts()
    chosen = known if args.only is None else args.only.split(",")
    unknown = [s for s in chosen if s not in known]
    if unknown:
        parser.error(f"--only: unknown scripts {unknown}; known: {known}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no GPU here")
    rows, skipped, seconds = [], {}, {}
    if args.update and args.out.exists():
        rows, skipped, seconds = _kept(json.loads(args.out.read_text()), chosen, args.quick, args.device)
    parallel = args.parallel or (2 if args.quick else 1)
    if parallel > 1:  # the children inherit it: two scripts on two cores, not four threads fighting
        os.environ["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        print(f"running {', '.join(chosen)} ({parallel} at a time) ...", file=sys.stderr, flush=True)
        futures = {pool.submit(run_one, script, arguments(script, args.quick, args.device), args.timeout): script
                   for script in chosen}
        for future in concurrent.futures.as_completed(futures):
            script = futures[future]
            found, why, seconds[script] = future.result()
            rows += found
            if why:
                skipped[script] = why
            print(f"  {script}: {seconds[script]:.0f} s, {len(found)} rows{f' ({why})' if why else ''}",
                  file=sys.stderr, flush=True)
    order = {s: i for i, s in enumerate(known)}
    rows.sort(key=lambda r: order.get(r.get("script"), len(order)))  # table order, also after --update
    args.out.write_text(json.dumps({"machine": machine(), "quick": args.quick, "rows": rows, "skipped": skipped,
                                    "script_seconds": seconds}, indent=2) + "\n")
    from benchmarks.readme_tables import tables

    print(tables(json.loads(args.out.read_text())))
    for script, why in skipped.items():
        print(f"\n- {script}: {why}")
    print("\nseconds per script: " + ", ".join(f"{s} {seconds[s]:.0f}" for s in chosen)
          + f"; this run {time.perf_counter() - started:.0f} s of wall time", file=sys.stderr)
    print(f"\nwrote {args.out}; `python benchmarks/readme_tables.py --write` puts the tables in README.md",
          file=sys.stderr)


if __name__ == "__main__":
    main()
