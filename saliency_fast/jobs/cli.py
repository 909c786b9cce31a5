"""``saliency-fast batch``: attribute a whole data set, resumably (registered by saliency_fast.cli)."""

from __future__ import annotations

import argparse
import json
import sys

# the same defaults and argument forms as `explain` (saliency_fast.cli imports this module lazily, in main())
from saliency_fast.cli_args import DEFAULT_LABELS, one_line_errors, parse_class_target, parse_labels, parse_positive_int
from saliency_fast.jobs.config import ENGINE_CHOICES, JobConfig

# config field -> (flag, help); every default is JobConfig's own
_CONFIG_FLAGS = {
    "model": ("--model", "a local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)"),
    "task": ("--task", "the Explainer's task (default: auto, from the model class; zero-shot for the default model)"),
    "reference": ("--reference", "reference text of the similarity task"),
    "method": ("--method", "attribution method, e.g. saliency, integrated_gradients"),
    "score": ("--score", "the scalar attributed: logit, prob, logprob, loss (heads, generation); margin, cosine (zero-shot)"),
    "aggregate": ("--aggregate", "aggregation over the embedding dim: sum, l2, abs_sum, dot"),
    "baseline": ("--baseline", "baseline of path methods: pad (falls back to unk, eos, zero), mask, unk, eos, zero"),
    "text_column": ("--text-column", "input column holding the texts"),
    "id_column": ("--id-column", "input column holding row ids (default: 'id' if present, else the row number)"),
    "generated_column": ("--generated-column", "generation: input column holding each row's response to force "
                         "(the continuation of a decoder-only prompt; the target text of an encoder-decoder model)"),
    "device": ("--device", "torch device (default: cuda when available)"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "batch", help="attribute every text of a Parquet or JSON Lines data set into resumable Parquet shards",
        description="Attribute every row of --input into Parquet shards under --output, with a manifest.json. "
        "Rerunning the same command resumes: finished shards are kept. Exits 1 if a shard failed.",
    )
    parser.add_argument("--input", required=True, help="a .parquet or .jsonl file, or a directory of them")
    parser.add_argument("--output", required=True, help="output directory (shards/, manifest.json)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="local", help="local (this process) or ray")
    for field, (flag, help_text) in _CONFIG_FLAGS.items():
        parser.add_argument(flag, dest=field, help=help_text)
    parser.add_argument("--labels", type=parse_labels, help="comma-separated zero-shot labels (default: "
                        f"{','.join(DEFAULT_LABELS)})")
    parser.add_argument("--target", type=parse_class_target, help="class index or label name (default: the prediction); "
                        "for --task generate the function attributed: logit (default), prob, logprob, loss")
    parser.add_argument("--max-new-tokens", type=parse_positive_int, help="generation: tokens to generate greedily per "
                        "prompt (with --generated-column: attribute at most this many tokens of each response)")
    parser.add_argument("--n-steps", type=parse_positive_int, help="steps of path methods (integrated gradients, ...)")
    parser.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE", type=_method_arg,
                        help="another method argument, VALUE parsed as JSON when it can be (e.g. "
                        "internal_batch_size=64); repeatable")
    parser.add_argument("--batch-size", type=parse_positive_int, help="texts per model call")
    parser.add_argument("--shard-size", type=parse_positive_int, help="rows per output shard (the unit of resume)")
    parser.add_argument("--actors", type=parse_positive_int, help="Ray engine: actors (default: one per GPU, else 1)")
    parser.add_argument("--cpus-per-actor", type=float, help="Ray engine: CPUs each actor reserves")
    parser.add_argument("--overwrite", action="store_true", help="discard finished shards instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


@one_line_errors("batch", interrupted="; rerun the same command to resume")
def run(args: argparse.Namespace) -> int:
    summary = _run(args)
    print(
        f"{summary.done}/{summary.shards} shards done ({summary.resumed} from an earlier run), {summary.rows} rows, "
        f"{summary.row_errors} with an error, in {summary.seconds:.1f}s -> {summary.output}"
    )
    for failure in summary.failed:
        print(f"shard {failure.index} failed: {failure.error}", file=sys.stderr)
    return 0 if summary.ok else 1


def _run(args: argparse.Namespace):
    given = {name: getattr(args, name) for name in [*_CONFIG_FLAGS, "labels", "target", "max_new_tokens", "batch_size", "shard_size"]}
    config = {name: value for name, value in given.items() if value is not None}
    # as `explain`: the default model is a zero-shot sentiment classifier unless told otherwise
    if args.model is None and config.get("task", "auto") == "auto" and args.reference is None:
        config["task"] = "zero-shot"
    if config.get("task") == "zero-shot" and args.labels is None:
        config["labels"] = DEFAULT_LABELS
    method_kwargs = dict(args.method_arg)
    if args.n_steps is not None:
        if "n_steps" in method_kwargs:
            raise ValueError("n_steps is given twice: by --n-steps and by --method-arg")
        method_kwargs["n_steps"] = args.n_steps
    config = JobConfig(**config, method_kwargs=method_kwargs)
    progress = not args.no_progress
    if args.engine == "ray":
        from saliency_fast.jobs.ray_engine import run_ray

        return run_ray(config, args.input, args.output, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                       overwrite=args.overwrite, progress=progress)
    from saliency_fast.jobs.local import run_local

    return run_local(config, args.input, args.output, overwrite=args.overwrite, progress=progress)


def _method_arg(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
