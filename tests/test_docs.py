"""Documentation that runs: every ```python block of README.md and docs/*.md is executed.

The blocks of one file run in order in one namespace, as a reader who pastes the page's examples
one after the other, each file in its own temporary working directory (examples write files).
Files and blocks are found anew on every run, so a block anyone adds is tested with no change here.

Model weights cannot be downloaded in CI: a block that loads a hub id with
``transformers.Auto*.from_pretrained`` gets a tiny randomly initialised stand-in of the same
family from :data:`HUB_STAND_INS` (a hub id missing there fails with a message saying so); local
directories load as usual. The embedded all-MiniLM-L6-v2 (``default_model()``) is the real one.
"""

from __future__ import annotations

import os
import pathlib
import re
import textwrap
import traceback

import pytest
import torch
import transformers

from tiny_models import gpt2_like_tokenizer, seq2seq_tokenizer, tiny_decoder, tiny_seq2seq

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
PYTHON_LANGS = ("python", "py", "python3")

# hub id -> (model class name, tiny model factory, tokenizer factory)
HUB_STAND_INS = {
    "gpt2": (("AutoModelForCausalLM", "GPT2LMHeadModel"),
             lambda: tiny_decoder("gpt2", "causal_lm", gpt2_like_tokenizer()), gpt2_like_tokenizer),
    "t5-small": (("AutoModelForSeq2SeqLM", "T5ForConditionalGeneration"),
                 lambda: tiny_seq2seq("t5")[0], lambda: seq2seq_tokenizer("t5")),
}


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced ```python block of a Markdown file."""
    blocks, open_at, lang, indent, lines = [], None, None, "", []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line)
        if open_at is None:
            if fence and fence["lang"]:
                open_at, lang, indent, lines = number, fence["lang"].lower(), fence["indent"], []
            elif fence:  # an unlabelled block: skip it whole
                open_at, lang, indent, lines = number, "", fence["indent"], []
            continue
        if fence and not fence["lang"]:
            if lang in PYTHON_LANGS:
                blocks.append((open_at, textwrap.dedent("\n".join(lines))))
            open_at = None
            continue
        lines.append(line[len(indent):] if line.startswith(indent) else line)
    if open_at is not None:
        raise ValueError(f"{path.name}:{open_at}: a ``` block is never closed")
    return blocks


def _offline_hub(monkeypatch) -> None:
    """``from_pretrained(hub id)`` gives the id's tiny stand-in; local directories load as usual."""

    def stand_in(kind: str, original):
        def load(name, *args, **kwargs):
            if os.path.isdir(str(name)):
                return original(name, *args, **kwargs)
            if str(name) not in HUB_STAND_INS:
                raise AssertionError(f"a docs block loads hub id {name!r}: give it an offline stand-in in "
                                     f"tests/test_docs.py HUB_STAND_INS")
            classes, model, tokenizer = HUB_STAND_INS[str(name)]
            if kind == "tokenizer":
                return tokenizer()
            if kind not in classes:
                raise AssertionError(f"hub id {name!r} is loaded with {kind}; its stand-in is one of {classes}")
            return model()

        return load

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        stand_in("tokenizer", transformers.AutoTokenizer.from_pretrained))
    for cls in {c for classes, _, _ in HUB_STAND_INS.values() for c in classes}:
        auto = getattr(transformers, cls)
        monkeypatch.setattr(auto, "from_pretrained", stand_in(cls, auto.from_pretrained))


def test_the_docs_have_python_blocks_to_run():
    assert python_blocks(ROOT / "README.md"), "README.md has no ```python block: the extraction is broken"
    assert len(DOC_FILES) > 1


def test_the_block_extraction_reads_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n```\n```bash\nls\n```\n- item\n\n  ```python\n  y = 2\n  ```\n"
                    "```\nz\n```\n")
    assert python_blocks(page) == [(2, "x = 1"), (10, "y = 2")]


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_every_python_block_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _offline_hub(monkeypatch)
    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    for line, code in python_blocks(path):
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception:
            pytest.fail(f"the ```python block at {path.relative_to(ROOT)}:{line} fails:\n{traceback.format_exc()}")
