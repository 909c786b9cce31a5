"""Command line: ``saliency-fast explain TEXT``, ``saliency-fast batch ...``, ``saliency-fast info``.

Bad arguments and failures print one line to stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from saliency_fast.hf import method_registry
from saliency_fast.cli_args import (DEFAULT_LABELS, EXPLAIN_TASKS, check_model_path, one_line_errors,
                                     parse_class_target, parse_labels, parse_positive_int)

DEFAULT_OUT = "saliency_out"
DEFAULT_MAX_NEW_TOKENS = 10
OUTPUT_NAMES = ("attribution.json", "attribution.html", "attribution.png")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as the CLI's one-line errors (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="saliency-fast", description="Fast gradient saliency for transformers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_explain_parser(sub)
    sub.add_parser("info", help="show which backend (native CPU/CUDA or reference) is active and why")
    from saliency_fast.jobs.cli import add_parser as add_batch_parser

    add_batch_parser(sub)
    from saliency_fast.serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    from saliency_fast.influence_cli import add_parser as add_influence_parser

    add_influence_parser(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):  # sub-commands registered by their own modules
        return args.handler(args)
    if args.command == "info":
        from saliency_fast import info

        json.dump(info(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    return 2


# ----------------------------------------------------------------------------------- explain


def _add_explain_parser(sub) -> None:
    parser = sub.add_parser(
        "explain", help="attribute one text and write attribution.json/.html/.png",
        description="Attribute one text (or a prompt's continuation, --task generate) to its tokens: print the "
        "coloured tokens and write attribution.json, attribution.html and attribution.png to --out. Without "
        "--model, the embedded all-MiniLM-L6-v2 scores the text as a zero-shot sentiment classifier "
        f"(labels {','.join(DEFAULT_LABELS)}), offline.",
    )
    parser.add_argument("text", help="the text to explain (for --task generate: the prompt)")
    parser.add_argument("--model", help="a local Hugging Face model directory or hub id (default: the embedded "
                        "all-MiniLM-L6-v2)")
    parser.add_argument("--task", choices=EXPLAIN_TASKS, default="auto",
                        help="what the model does (default: auto, from the model class; zero-shot for the default model)")
    parser.add_argument("--method", default="saliency",  # checked by the registry, which names the choices
                        help=", ".join(method_registry.method_names()) + " (generation: "
                        + ", ".join(method_registry.method_names("generate")) + ")")
    parser.add_argument("--target", help="class index or label name (default: the prediction); for --task generate "
                        "the function of each generated token attributed: logit (default), prob, logprob, loss")
    parser.add_argument("--score", help="the scalar attributed: logit, prob, logprob, loss (classification heads); "
                        "margin, cosine (zero-shot); cosine (similarity)")
    parser.add_argument("--aggregate", default="l2", help="how the embedding dim becomes one score: l2 (default), "
                        "sum, abs_sum, dot")
    parser.add_argument("--baseline", default="pad", help="baseline of path methods: pad (default; falls back to "
                        "unk, eos, zero when the tokenizer lacks it), mask, unk, eos, zero")
    parser.add_argument("--labels", type=parse_labels, help="comma-separated zero-shot labels (default: positive,negative)")
    parser.add_argument("--reference", help="similarity: the reference text")
    parser.add_argument("--max-new-tokens", type=parse_positive_int, help="generate: tokens to generate greedily "
                        f"(default {DEFAULT_MAX_NEW_TOKENS} unless --generated-text is given)")
    parser.add_argument("--generated-text", help="generate: the full text (prompt + continuation) to force")
    parser.add_argument("--n-steps", type=parse_positive_int, help="steps of path methods (integrated gradients, ...)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default ./{DEFAULT_OUT})")
    parser.set_defaults(handler=_run_explain)


@one_line_errors("explain")
def _run_explain(args: argparse.Namespace) -> int:
    result = _explain(args)
    paths = _write_outputs(result, pathlib.Path(args.out))
    result.show()
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _explain(args: argparse.Namespace):
    explainer = _load_explainer(args)
    method_kwargs = {"n_steps": args.n_steps} if args.n_steps is not None else {}
    common = dict(method=args.method, aggregate=args.aggregate, baseline=args.baseline, **method_kwargs)
    if explainer.task == "generate":
        if args.score is not None:
            raise ValueError("--score does not apply to --task generate; use --target logit|prob|logprob|loss")
        max_new = args.max_new_tokens
        if max_new is None and args.generated_text is None:
            max_new = DEFAULT_MAX_NEW_TOKENS
        return explainer.attribute_generation(
            args.text, max_new_tokens=max_new, generated_text=args.generated_text,
            target=args.target or "logit", **common,
        )
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--generated-text", args.generated_text)):
        if value is not None:
            raise ValueError(f"{flag} applies only to --task generate; this model's task is {explainer.task!r}")
    return explainer.attribute(
        args.text, target=parse_class_target(args.target), score=args.score, reference=args.reference, progress=True,
        **common,
    )


def _load_explainer(args: argparse.Namespace):
    task, labels = args.task, args.labels
    if args.model is None:
        task = "zero-shot" if task == "auto" else task
        if task not in ("zero-shot", "similarity"):
            raise ValueError(f"--task {task} needs --model: the embedded all-MiniLM-L6-v2 does zero-shot and similarity")
    else:
        check_model_path(args.model)
    if task == "zero-shot" and labels is None:
        labels = list(DEFAULT_LABELS)
    import torch

    from saliency_fast.hf.explainer import Explainer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model is None:
        from saliency_fast.hf.packaged_model import default_model

        print("loading the embedded all-MiniLM-L6-v2 ...", file=sys.stderr)
        return Explainer(*default_model(), task=task, labels=labels, device=device)
    print(f"loading {args.model} ...", file=sys.stderr)
    return Explainer.from_pretrained(args.model, task=task, labels=labels, device=device)


def _write_outputs(result, out: pathlib.Path) -> list[pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path, png_path = (out / name for name in OUTPUT_NAMES)
    result.to_json(json_path, indent=1)
    result.to_html(html_path)
    result.plot(path=png_path)
    return [json_path, html_path, png_path]
