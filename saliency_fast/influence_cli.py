"""``saliency-fast influence``: the training texts that most raised and lowered each test
prediction, written as influence.json and influence.html (registered by saliency_fast.cli)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from saliency_fast.cli_args import one_line_errors, parse_positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "influence", help="find each test text's most helpful and harmful training texts (TracIn)",
        description="TracIn influence of the --train texts on each --test text's prediction by a sequence "
        "classifier (--model): writes influence.json and influence.html to --output, and keeps the training "
        "gradient index under --output/index (rerunning the same command resumes or reuses it).",
    )
    parser.add_argument("--train", required=True, help="a .jsonl or .parquet file with text and label columns")
    parser.add_argument("--test", required=True, help="a .jsonl or .parquet file with a text column")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--model", required=True, help="a local sequence-classification model directory")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH[@LR]",
                        help="a training checkpoint (state dict) and its learning rate; repeatable "
                        "(default: the model's own weights)")
    parser.add_argument("--k", type=parse_positive_int, default=10, help="proponents and opponents per test text")
    parser.add_argument("--layers", help="comma-separated Linear module names (default: last block + head)")
    parser.add_argument("--projection-dim", type=int, default=256,
                        help="per-layer projection size; 0 for exact gradients (default 256)")
    parser.add_argument("--projection", choices=("pca", "random"), default="pca",
                        help="fitted to the training gradients (pca, default) or random orthogonal")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=parse_positive_int, default=32)
    parser.add_argument("--shard-size", type=parse_positive_int, default=1024, help="rows per index shard (unit of resume)")
    parser.add_argument("--backend", choices=("faiss-gpu", "faiss-cpu", "torch"), help="search backend")
    parser.add_argument("--device", help="torch device (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)
    return parser


def read_rows(path: str, columns: list[str]) -> dict[str, list]:
    """``columns`` of a JSON Lines or Parquet file; a missing column or a bad line is an error."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"{path!r} is not a file; expected a .jsonl or .parquet file")
    if file.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(file)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
        return {c: table.column(c).to_pylist() for c in columns}
    if file.suffix.lower() not in (".jsonl", ".ndjson"):
        raise ValueError(f"{path!r} must be a .jsonl or .parquet file")
    out = {c: [] for c in columns}
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            for c in columns:
                if c not in row:
                    raise ValueError(f"{path} line {number} has no {c!r} field")
                out[c].append(row[c])
    return out


def _checkpoints(values: list[str]):
    """``PATH`` or ``PATH@LR`` each; None (the model's weights) when there are none."""
    if not values:
        return None
    pairs = []
    for value in values:
        path, sep, lr = value.rpartition("@")
        try:
            pairs.append((path, float(lr)) if sep else value)
        except ValueError:
            raise ValueError(f"--checkpoint {value!r}: the learning rate after '@' must be a number") from None
    return pairs


@one_line_errors("influence", interrupted="; rerun the same command to resume")
def run(args: argparse.Namespace) -> int:
    import torch

    from saliency_fast.cli_args import check_model_path
    from saliency_fast.hf.explainer import Explainer
    from saliency_fast.viz import influence_html

    train = read_rows(args.train, [args.text_column, args.label_column])
    test = read_rows(args.test, [args.text_column])
    check_model_path(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"loading {args.model} ...", file=sys.stderr)
    explainer = Explainer.from_pretrained(args.model, task="classify", device=device)
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    output = pathlib.Path(args.output)
    results = explainer.influence(
        train[args.text_column], train[args.label_column], test[args.text_column], k=args.k, layers=layers,
        projection_dim=args.projection_dim or None, projection=args.projection,
        checkpoints=_checkpoints(args.checkpoint), output=output, backend=args.backend, batch_size=args.batch_size, shard_size=args.shard_size, progress=not args.no_progress,
    )
    dicts = [r.to_dict() for r in results]
    from saliency_fast._files import atomic_write_text

    atomic_write_text(output / "influence.json", json.dumps(dicts, indent=1))
    atomic_write_text(output / "influence.html", influence_html.document(dicts, explainer.model.config.id2label))
    print(f"wrote {output / 'influence.json'}, {output / 'influence.html'}")
    return 0
