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
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray engine needs Ray Data: pip install 'saliency-fast[ray]'") from exc
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ValueError(f"actors must be a positive integer, got {actors!r}")
    if cpus_per_actor is not None and not (isinstance(cpus_per_actor, (int, float)) and cpus_per_actor > 0):
        raise ValueError(f"cpus_per_actor must be a positive number, got {cpus_per_actor!r}")
    plan = make_plan(input, config)
    job = JobDir(output)
    with job.locked():
        pending = job.start(plan, config, overwrite=overwrite)
        try:
            if pending:
                _run_pending(ray, job, plan, config, pending, actors, cpus_per_actor, progress)
        finally:
            summary = job.finish()
    return summary


def _run_pending(ray, job: JobDir, plan: Plan, config: JobConfig, pending, actors, cpus_per_actor, progress) -> None:
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0) if config.device is None or config.device.startswith("cuda") else 0.0
    size = min(actors or max(int(gpus), 1), len(pending))
    if cpus_per_actor is None:
        # leave at least one CPU to Ray's own tasks (see the module docstring)
        cpus_per_actor = min(1.0, max(resources.get("CPU", 1.0) - 1.0, 0.25) / size)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts texts, not blocks
    context.print_on_execution_start = False
    shards = ray.data.from_items([{"shard": s.index} for s in pending], override_num_blocks=len(pending))
    outcomes = shards.map_batches(
        ShardWorker,
        fn_constructor_kwargs={
            "config_json": config.to_json(), "plan_json": json.dumps(plan.to_dict()), "output": str(job.root.resolve()),
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
        num_cpus=cpus_per_actor,
        num_gpus=min(1.0, gpus / size),  # more actors than GPUs share them
    )
    finished_rows = plan.rows - sum(s.rows for s in pending)
    with tqdm(total=plan.rows, initial=finished_rows, unit="text", desc=f"attributing ({size} Ray actors)",
              disable=not progress) as bar:
        for batch in outcomes.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                outcome = ShardOutcome(**row)
                job.record(outcome)
                bar.update(outcome.rows)
                if outcome.config_error:
                    raise JobConfigError(outcome.error)
                if outcome.status == FAILED:
                    bar.write(f"shard {plan.shards[outcome.index].name} failed: {outcome.error}")
