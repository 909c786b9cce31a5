"""Argument forms and error handling shared by the command line's sub-commands (``explain`` in
:mod:`saliency_fast.cli`, ``batch`` in :mod:`saliency_fast.jobs.cli`, ``serve`` in
:mod:`saliency_fast.serve.cli`, ``influence`` in :mod:`saliency_fast.influence_cli`): a leaf they all
import, so no sub-command imports another."""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import re
import sys

EXPLAIN_TASKS = ("auto", "classify", "tagging", "generate", "similarity", "zero-shot")
DEFAULT_LABELS = ("positive", "negative")


def parse_labels(value: str) -> list[str]:
    labels = [label.strip() for label in value.split(",")]
    if len(labels) < 2 or not all(labels):
        raise argparse.ArgumentTypeError(f"expected at least two comma-separated non-empty labels, got {value!r}")
    return labels


def parse_positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def one_line_errors(command: str, interrupted: str = ""):
    """Decorator of a sub-command's handler: an expected error (bad input, a missing file, a model
    that fails) becomes one line on stderr and exit status 2, Ctrl-C status 130; never a traceback."""

    def wrap(handler):
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except KeyboardInterrupt:
                print(f"saliency-fast {command}: interrupted{interrupted}", file=sys.stderr)
                return 130
            except (ValueError, TypeError, RuntimeError, ImportError, OSError) as exc:
                print(f"saliency-fast {command}: error: {one_line(exc)}", file=sys.stderr)
                return 2

        return run

    return wrap


def check_model_path(model: str) -> None:
    """A path (not a hub id) must exist: fail before transformers tries the network."""
    looks_like_path = model.startswith((".", "~", os.sep)) or model.count("/") > 1  # hub ids: "name", "org/name"
    path = pathlib.Path(model).expanduser()
    if looks_like_path and not path.exists():
        raise ValueError(f"--model {model!r}: no such directory")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--model {model!r} is a file; expected a model directory (config.json, weights, tokenizer)")


def parse_class_target(value: str | None):
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def one_line(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."
