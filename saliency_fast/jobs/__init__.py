"""Data-set attribution jobs: millions of texts, resumable, on one machine or a Ray cluster.

- :class:`JobConfig`: what to attribute and how (plain data, JSON round-trip).
- :class:`Attributor`: a picklable callable, batch of texts -> batch of results, for a plain loop,
  Ray Data ``map_batches`` or Spark.
- :func:`run_local` / :func:`run_ray`: split the input (Parquet or JSON Lines) into shards and
  write each as an atomic Parquet file under ``output/shards/``, with ``output/manifest.json``;
  rerunning the same job skips finished shards.
- :func:`read_results`: the finished shards, in input order.

The command line is ``saliency-fast batch`` (:mod:`saliency_fast.jobs.cli`).
"""

from saliency_fast.jobs.attributor import Attributor, JobConfigError, result_schema
from saliency_fast.jobs.config import JobConfig
from saliency_fast.jobs.io import read_results
from saliency_fast.jobs.local import run_local
from saliency_fast.jobs.ray_engine import run_ray
from saliency_fast.jobs.runner import JobSummary, ShardOutcome

__all__ = [
    "Attributor", "JobConfig", "JobConfigError", "JobSummary", "ShardOutcome", "read_results", "result_schema",
    "run_local", "run_ray",
]
