"""The Ray engine: Ray Data over the job's pending shards, with an actor pool holding the model.

Each actor owns one :class:`Attributor` (its model loaded once, on a GPU of its own when the
cluster has GPUs) and processes whole shards with the same :func:`run_shard` as the local engine,
so shard files, atomic writes and resume are identical; the driver alone writes the manifest.
Three properties of Ray Data (measured with Ray 2.60) shape this module:

- an exception escaping a UDF fails the whole dataset, so the actor turns every failure into a
  shard outcome (rows already carry their own errors);
- Ray's own writers write to the final paths, so the actors write their shards themselves;
- an actor pool that reserves every CPU of a small machine starves Ray's other tasks and hangs,
  so actors ask for a fraction of a CPU unless told otherwise.

The input and output paths must be readable and writable from every node (a shared file system).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import pyarrow as pa
from tqdm.auto import tqdm

from saliency_fast._ray_pool import check_pool_arguments, import_ray, map_shards
from saliency_fast.jobs.attributor import Attributor, JobConfigError
from saliency_fast.jobs.config import JobConfig
from saliency_fast.jobs.plan import Plan, make_plan
from saliency_fast.jobs.runner import FAILED, JobDir, JobSummary, ShardOutcome, run_shard

OUTCOME_SCHEMA = pa.schema([
    ("index", pa.int64()),
    ("status", pa.string()),
    ("rows", pa.int64()),
    ("row_errors", pa.int64()),
    ("seconds", pa.float64()),
    ("error", pa.string()),
    ("config_error", pa.bool_()),
])


class ShardWorker:
    """Ray Data actor UDF: batches of shard indices in, one outcome row per shard out."""

    def __init__(self, config_json: str, plan_json: str, output: str):
        self.config = JobConfig.from_json(config_json)
        self.plan = Plan.from_dict(json.loads(plan_json))
        self.output = pathlib.Path(output)
        self.attributor = Attributor(self.config)

    def __call__(self, batch: pa.Table) -> pa.Table:
        outcomes = []
        for index in batch.column("shard").to_pylist():
            shard = self.plan.shards[index]
            try:
                outcome = run_shard(self.attributor, self.plan, shard, self.config, self.output)
            except JobConfigError as exc:
                outcome = ShardOutcome(index, FAILED, shard.rows, error=str(exc), config_error=True)
            outcomes.append(dataclasses.asdict(outcome))
        return pa.Table.from_pylist(outcomes, schema=OUTCOME_SCHEMA)


def run_ray(config: JobConfig, input: str | os.PathLike, output: str | os.PathLike, *, actors: int | None = None,
            cpus_per_actor: float | None = None, overwrite: bool = False, progress: bool = True) -> JobSummary:
    """Attribute every row of ``input`` into ``output`` on a Ray cluster (the one this process is
    connected to, else ``ray.init()``: ``RAY_ADDRESS`` or a new local cluster).

    ``actors`` defaults to one per GPU of the cluster (each then holds a GPU; more actors share
    them), or 1 without GPUs;
    ``cpus_per_actor`` to 1, or less where the cluster's CPUs would all go to actors.
    """
    import_ray()
    check_pool_arguments(actors, cpus_per_actor)
    plan = make_plan(input, config)
    job = JobDir(output)
    with job.locked():
        pending = job.start(plan, config, overwrite=overwrite)
        try:
            if pending:
                _run_pending(job, plan, config, pending, actors, cpus_per_actor, progress)
        finally:
            summary = job.finish()
    return summary


def _run_pending(job: JobDir, plan: Plan, config: JobConfig, pending, actors, cpus_per_actor, progress) -> None:
    rows = map_shards(
        ShardWorker,
        {"config_json": config.to_json(), "plan_json": json.dumps(plan.to_dict()), "output": str(job.root.resolve())},
        [s.index for s in pending], actors=actors, cpus_per_actor=cpus_per_actor,
        use_gpus=config.device is None or config.device.startswith("cuda"),
    )
    size = next(rows)
    finished_rows = plan.rows - sum(s.rows for s in pending)
    with tqdm(total=plan.rows, initial=finished_rows, unit="text", desc=f"attributing ({size} Ray actors)",
              disable=not progress) as bar:
        for row in rows:
            outcome = ShardOutcome(**row)
            job.record(outcome)
            bar.update(outcome.rows)
            if outcome.config_error:
                raise JobConfigError(outcome.error)
            if outcome.status == FAILED:
                bar.write(f"shard {plan.shards[outcome.index].name} failed: {outcome.error}")
