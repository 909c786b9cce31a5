"""benchmarks/run_all.py: the table, and --update keeping the rows of scripts not rerun."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import run_all  # noqa: E402


def row(script, workload, peer_s=2.0, ours_s=1.0):
    return {"workload": workload, "peer": "p|eer", "peer_s": peer_s, "ours_s": ours_s, "ratio": peer_s / ours_s,
            "max_diff": 1e-7, "floor_s": None, "script": script}


def test_markdown_escapes_pipes_and_formats_times():
    table = run_all.markdown([row("bench_dig.py", "w", 0.05, 0.01)])
    assert "p\\|eer" in table and "50.00 ms" in table and "10.00 ms" in table and "5.00x" in table
    assert table.splitlines()[-1].endswith("| n/a |")


def test_update_replaces_only_the_rerun_scripts(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"quick": True, "rows": [row("bench_dig.py", "old dig"), row("bench_ops.py", "ops")],
                               "skipped": {"bench_jobs.py": "timed out"}, "script_seconds": {"bench_ops.py": 3.0}}))
    monkeypatch.setattr(run_all, "run_one", lambda script, extra, timeout: ([row(script, "new dig")], None, 1.0))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", "bench_dig.py", "--update", "--out", str(out)])
    run_all.main()
    found = json.loads(out.read_text())
    assert [r["workload"] for r in found["rows"]] == ["ops", "new dig"]  # table order: ops first
    assert found["skipped"] == {"bench_jobs.py": "timed out"}
    assert found["script_seconds"] == {"bench_ops.py": 3.0, "bench_dig.py": 1.0}


def test_update_refuses_to_mix_quick_and_full_rows(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"quick": False, "rows": []}))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--only", "bench_dig.py", "--update", "--out", str(out)])
    with pytest.raises(SystemExit, match="full run"):
        run_all.main()
