"""benchmarks/: the shared timing helper, the row schema, run_all.py and the generated README tables."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import _results, _timing, readme_tables, run_all  # noqa: E402


def timing(seconds: float, runs: int = 3, warmup: int = 1) -> _timing.Timing:
    return _timing.Timing((seconds,) * runs, (seconds,) * runs, warmup)


def row(script, workload, peer_s=2.0, ours_s=1.0, kind="equal-work", device="cpu"):
    found = _results.row(workload, "p|eer", timing(peer_s), timing(ours_s), max_diff=1e-7, peer_dtype="float32",
                         ours_dtype="bfloat16" if kind == "less-work" else "float32", floor_s=None, kind=kind,
                         accuracy="rel. error 1e-3" if kind == "less-work" else None, device=device)
    return {**found, "script": script, "machine": _results.machine()}


def test_interleaved_gives_every_contender_the_same_warmups_and_runs_in_turns():
    calls = []
    timings = _timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=2)
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then rounds in rotated order
    assert {t.runs for t in timings.values()} == {3} and {t.warmup for t in timings.values()} == {2}
    with pytest.raises(ValueError, match="runs must be >= 1"):
        _timing.interleaved({"a": lambda: None}, runs=0)


def test_row_carries_the_schema_and_refuses_a_less_work_row_without_accuracy():
    found = _results.row("w", "peer", timing(2.0), timing(0.5, runs=5, warmup=2), max_diff=None,
                         peer_dtype="float32", ours_dtype="float32", floor_s=0.1)
    assert set(_results.FIELDS) <= set(found)
    assert found["ratio"] == 4.0 and found["ours_runs"] == 5 and found["ours_warmup"] == 2 and found["peer_runs"] == 3
    assert found["date"] and found["commit"]
    with pytest.raises(ValueError, match="accuracy"):
        _results.row("w", "p", timing(1), timing(1), max_diff=None, peer_dtype="float32", ours_dtype="bfloat16",
                     floor_s=None, kind="less-work")
    with pytest.raises(ValueError, match="kind"):
        _results.row("w", "p", timing(1), timing(1), max_diff=None, peer_dtype="f", ours_dtype="f", floor_s=None,
                     kind="faster")


def test_tables_split_rows_by_kind_escape_pipes_and_show_the_gpu_column():
    results = {"rows": [row("bench_a.py", "same"), row("bench_a.py", "fewer", kind="less-work"),
                        row("bench_a.py", "other", kind="design"),
                        row("bench_a.py", "same", peer_s=3.0, ours_s=0.5, device="cuda")]}
    text = readme_tables.tables(results)
    equal, less = text.split("**Doing less work**")
    less, design = less.split("**Design comparisons**")
    assert "| same | p\\|eer |" in equal and "6.00x (0.50 s)" in equal  # the CUDA twin fills the GPU column
    assert "fewer" in less and "rel. error 1e-3" in less and "not measured" in less
    assert "| other |" in design and "fewer" not in design and "same" not in design
    assert text.count("| same |") == 1  # the CUDA row shows in the GPU column only


def test_readme_tables_equal_results_json():
    readme = (ROOT / "README.md").read_text()
    generated = readme_tables.tables(json.loads((ROOT / "benchmarks" / "results.json").read_text()))
    assert readme_tables.readme_with(readme, generated) == readme, \
        "README's benchmark tables differ from results.json: run `python benchmarks/readme_tables.py --write`"


def test_results_rows_carry_every_field_and_a_known_kind():
    for found in json.loads((ROOT / "benchmarks" / "results.json").read_text())["rows"]:
        assert set(_results.FIELDS) <= set(found), found["workload"]
        assert found["kind"] in _results.KINDS
        assert found["kind"] != "less-work" or found["accuracy"], found["workload"]
        assert found["kind"] == "design" or found["peer_dtype"] == found["ours_dtype"] or \
            found["kind"] == "less-work", f"{found['workload']}: different precision outside the less-work table"


def test_update_replaces_only_the_rerun_scripts_on_the_same_device(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"quick": True, "rows": [row("bench_dig.py", "old dig"), row("bench_ops.py", "ops"),
                                                       row("bench_dig.py", "gpu dig", device="cuda")],
                               "skipped": {"bench_jobs.py": "timed out"}, "script_seconds": {"bench_ops.py": 3.0}}))
    monkeypatch.setattr(run_all, "run_one", lambda script, extra, timeout: ([row(script, "new dig")], None, 1.0))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", "bench_dig.py", "--update", "--out", str(out)])
    run_all.main()
    found = json.loads(out.read_text())
    assert [r["workload"] for r in found["rows"]] == ["ops", "gpu dig", "new dig"]  # table order: ops first
    assert found["skipped"] == {"bench_jobs.py": "timed out"}
    assert found["script_seconds"] == {"bench_ops.py": 3.0, "bench_dig.py": 1.0}


def test_update_keeps_rows_recorded_by_hand_without_a_script(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    by_hand = {k: v for k, v in row("bench_generation.py", "llama by hand").items() if k not in ("script", "machine")}
    out.write_text(json.dumps({"quick": False, "rows": [by_hand, row("bench_dig.py", "old dig")]}))
    monkeypatch.setattr(run_all, "run_one", lambda script, extra, timeout: ([row(script, "new dig")], None, 1.0))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "bench_dig.py", "--update", "--out", str(out)])
    run_all.main()
    assert [r["workload"] for r in json.loads(out.read_text())["rows"]] == ["new dig", "llama by hand"]
    assert "not recorded for 1 rows" in readme_tables.tables(json.loads(out.read_text()))


def test_update_refuses_to_mix_quick_and_full_rows(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"quick": False, "rows": []}))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", "bench_dig.py", "--update", "--out", str(out)])
    with pytest.raises(SystemExit, match="full run"):
        run_all.main()


def test_every_bench_script_is_found_and_takes_device_and_quick():
    assert run_all.scripts()[:2] == ["bench_ops.py", "bench_methods.py"]
    assert run_all.arguments("bench_ops.py", quick=True, device="cuda") == ["--quick", "--device", "cuda"]
    assert run_all.arguments("bench_new.py", quick=False, device="cpu") == []


def test_every_bench_script_declares_quick_and_device_cuda():
    """run_all.py passes --quick and --device cuda to every script (a script lacking one would be
    listed as failed, its rows missing from the tables)."""
    for script in run_all.scripts():
        source = (run_all.HERE / script).read_text()
        assert 'add_argument("--quick"' in source, f"{script} has no --quick"
        declared = [line for line in source.splitlines() if 'add_argument("--device"' in line]
        assert declared, f"{script} has no --device"
        assert "choices" not in declared[0] or '"cuda"' in declared[0], f"{script}: --device refuses cuda"


def test_readme_tables_refuse_to_write_a_quick_run(tmp_path, monkeypatch):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"quick": True, "rows": [row("bench_a.py", "same")]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{readme_tables.BEGIN}\n{readme_tables.END}\n")
    monkeypatch.setattr(readme_tables, "RESULTS", results)
    monkeypatch.setattr(readme_tables, "README", readme)
    monkeypatch.setattr(sys, "argv", ["readme_tables.py", "--write"])
    with pytest.raises(SystemExit, match="--quick run"):
        readme_tables.main()
    assert readme.read_text() == f"{readme_tables.BEGIN}\n{readme_tables.END}\n"


def test_a_script_writing_rows_without_the_schema_is_listed_not_kept(tmp_path, monkeypatch):
    script = tmp_path / "bench_old.py"
    script.write_text("import argparse, json\np = argparse.ArgumentParser(); p.add_argument('--json')\n"
                      "a = p.parse_args(); open(a.json, 'w').write(json.dumps({'rows': [{'workload': 'w'}]}))\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    rows, why, _ = run_all.run_one("bench_old.py", [], 60)
    assert rows == [] and "lacks" in why
