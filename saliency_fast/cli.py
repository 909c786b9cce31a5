"""Command line: ``saliency-fast info`` (more commands land with the Explainer)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saliency-fast", description="Fast gradient saliency for transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show which backend (native CPU/CUDA or reference) is active and why")
    from saliency_fast.jobs.cli import add_parser as add_batch_parser

    add_batch_parser(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):  # sub-commands registered by their own modules
        return args.handler(args)
    if args.command == "info":
        from saliency_fast import info

        json.dump(info(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    return 2
