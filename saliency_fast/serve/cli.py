"""``saliency-fast serve``: the KServe V1 explain server (registered by saliency_fast.cli)."""

from __future__ import annotations

import argparse
import sys

from saliency_fast.cli_args import EXPLAIN_TASKS, check_model_path, one_line_errors, parse_labels, parse_positive_int
from saliency_fast.serve.config import DEFAULT_LABELS, ENGINE_CHOICES, ServeConfig, read_token_file

LOG_LEVELS = ("debug", "info", "warning", "error")


def add_parser(subparsers) -> argparse.ArgumentParser:
    defaults = ServeConfig()
    parser = subparsers.add_parser(
        "serve", help="serve explanations over HTTP (KServe V1: /v1/models/<name>:explain), batching callers",
        description="Serve a model's explanations over HTTP with KServe's V1 protocol: GET /v1/models, "
        "POST /v1/models/<name>:predict and :explain, GET /metrics, /v2/health/live and /ready. Concurrent "
        "requests with the same parameters share Explainer calls. Without --model, the embedded "
        f"all-MiniLM-L6-v2 serves as a zero-shot sentiment classifier (labels {','.join(DEFAULT_LABELS)}).",
    )
    parser.add_argument("--model", help="a local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--name", help="the model's name in the URLs (default: the directory name)")
    parser.add_argument("--task", choices=EXPLAIN_TASKS, default="auto",
                        help="what the model does (default: auto, from the model class)")
    parser.add_argument("--labels", type=parse_labels, help="comma-separated zero-shot labels")
    parser.add_argument("--reference", help="similarity: the reference text")
    parser.add_argument("--host", default=defaults.host,
                        help=f"address to listen on (default {defaults.host}: this machine only)")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port}; 0: any free)")
    parser.add_argument("--max-batch-size", type=parse_positive_int, default=defaults.max_batch_size,
                        help=f"instances per Explainer call at most (default {defaults.max_batch_size})")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help=f"how long a batch waits for more requests (default {defaults.max_wait_ms:g})")
    parser.add_argument("--max-queue", type=parse_positive_int, default=defaults.max_queue,
                        help=f"instances waiting at most; more get 503 (default {defaults.max_queue})")
    parser.add_argument("--max-body-bytes", type=parse_positive_int, default=defaults.max_body_bytes,
                        help=f"larger request bodies get 413 (default {defaults.max_body_bytes})")
    parser.add_argument("--token-file", help="a file holding the bearer token every request must carry")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default="local", help="local (this process) or ray")
    parser.add_argument("--replicas", type=parse_positive_int, default=defaults.replicas,
                        help="Ray engine: model replicas (default 1)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--drain-seconds", type=float, default=defaults.drain_seconds,
                        help=f"on SIGTERM, how long requests in flight may take (default {defaults.drain_seconds:g})")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log level (default info)")
    parser.set_defaults(handler=run)
    return parser


@one_line_errors("serve")
def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not config.is_loopback:
        print(f"saliency-fast serve: listening on {config.host}: reachable from other machines", file=sys.stderr)
    if config.engine == "ray":
        from saliency_fast.serve.ray_engine import run_ray

        run_ray(config, log_level=args.log_level)
    else:
        from saliency_fast.serve.local import run_local

        run_local(config, log_level=args.log_level)
    return 0


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.model is not None:
        check_model_path(args.model)
    token = None if args.token_file is None else read_token_file(args.token_file)
    return ServeConfig(
        model=args.model, name=args.name, task=args.task, labels=args.labels, reference=args.reference,
        host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, max_body_bytes=args.max_body_bytes, token=token, engine=args.engine,
        replicas=args.replicas, device=args.device, drain_seconds=args.drain_seconds,
    )
