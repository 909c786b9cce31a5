"""Copy captum unit-test files into this folder, changing only the imports of classes we export.

Run from the repository root::

    python -m tests.captum_vendored._vendor --repo /path/to/captum.git --commit SHA tests/attr/test_saliency.py ...

Each file gets a header (captum's BSD-3 licence, the repository, path and commit) and then
captum's text with two kinds of line rewritten, nothing else:

- ``from captum.attr... import A, B`` where a name is a class ``saliency_fast`` exports: those
  names now come from ``saliency_fast`` (the others stay captum's);
- ``from captum.testing.attr.helpers.test_config import config``: captum's table of generated
  tests, whose ``algorithms`` are captum classes, comes from :mod:`._shim`, which swaps each
  class for ours of the same name and drops the cases of classes we do not export.

The file lands at the path below ``tests/attr/`` (``layer/`` files in ``layer/``). Deliberate
differences are marked by hand afterwards (``pytest.mark.xfail(strict=True, reason=...)``), so
re-vendoring a file means re-applying its marks: ``git diff`` shows them.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess

import saliency_fast

HERE = pathlib.Path(__file__).resolve().parent
REPOSITORY = "https://github.com/pytorch/captum"
CONFIG_IMPORT = "from captum.testing.attr.helpers.test_config import config"
SHIM_IMPORT = "from tests.captum_vendored._shim import config  # vendoring: captum's test table, our classes"
# one-line imports from captum's attribution modules: `from captum.attr.x.y import A, B`
CLASS_IMPORT = re.compile(r"^from (captum\.attr(?:\.[\w.]+)?) import ([\w, ]+)$")


def header(path: str, commit: str) -> str:
    return (
        "# Vendored from the captum unit tests: BSD 3-Clause License, Copyright (c) 2019, PyTorch team\n"
        "# (full text in tests/captum_vendored/LICENSE).\n"
        f"# Source: {REPOSITORY}, {path}, commit {commit}.\n"
        "# Changed: only the imports of the classes saliency_fast exports (see tests/captum_vendored/README.md).\n"
    )


def rewrite_line(line: str, ours: set[str]) -> str:
    if line.strip() == CONFIG_IMPORT:
        return SHIM_IMPORT
    match = CLASS_IMPORT.match(line)
    if not match:
        return line
    names = [n.strip() for n in match.group(2).split(",") if n.strip()]
    switched = [n for n in names if n in ours]
    if not switched:
        return line
    kept = [n for n in names if n not in ours]
    out = f"from saliency_fast import {', '.join(switched)}  # vendoring: was {match.group(1)}"
    return out if not kept else f"from {match.group(1)} import {', '.join(kept)}\n{out}"


def vendor(repo: str, commit: str, path: str) -> pathlib.Path:
    text = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout
    ours = {name for name in saliency_fast.__all__ if name[:1].isupper()}
    lines = [rewrite_line(line, ours) for line in text.splitlines()]
    start = 1 if lines and lines[0].startswith("#!") else 0  # keep the shebang first
    body = "\n".join(lines[:start] + [header(path, commit).rstrip("\n")] + lines[start:]) + "\n"
    target = HERE / pathlib.Path(path).relative_to("tests/attr")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="captum git directory (a clone or a bare mirror)")
    parser.add_argument("--commit", required=True)
    parser.add_argument("paths", nargs="+", help="paths in captum's repository, under tests/attr/")
    args = parser.parse_args()
    for path in args.paths:
        print(vendor(args.repo, args.commit, path))


if __name__ == "__main__":
    main()
