"""An actor pool over a job's shards on Ray Data: what the Ray engines of the attribution jobs
(:mod:`saliency_fast.jobs.ray_engine`) and of the influence index
(:mod:`saliency_fast.influence.ray_index`) share. A leaf: it imports nothing of the package.

Three properties of Ray Data (measured with Ray 2.60) shape it and its workers:

- an exception escaping a UDF fails the whole dataset, so a worker turns every failure into a
  shard outcome;
- Ray's own writers write to the final paths, so the workers write their shards themselves
  (atomically);
- an actor pool that reserves every CPU of a small machine starves Ray's other tasks and hangs,
  so actors ask for a fraction of a CPU unless told otherwise.
"""

from __future__ import annotations

import os


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray engine needs Ray Data: pip install 'saliency-fast[ray]'") from exc
    return ray


def check_pool_arguments(actors: int | None, cpus_per_actor: float | None) -> None:
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ValueError(f"actors must be a positive integer, got {actors!r}")
    if cpus_per_actor is not None and not (isinstance(cpus_per_actor, (int, float)) and cpus_per_actor > 0):
        raise ValueError(f"cpus_per_actor must be a positive number, got {cpus_per_actor!r}")


def map_shards(worker, worker_kwargs: dict, indices: list[int], *, actors: int | None, cpus_per_actor: float | None,
               use_gpus: bool):
    """Ray Data over shard ``indices`` (one per block), through an actor pool of ``worker``
    (a Ray Data callable class built with ``worker_kwargs``, taking a pyarrow batch of ``shard``
    indices and returning one outcome row per shard); yields the outcome rows as shards finish,
    and the pool's size first. Connects to the cluster this process knows, else ``ray.init()``."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0.0) if use_gpus else 0.0
    size = min(actors or max(int(gpus), 1), len(indices))
    if cpus_per_actor is None:
        # leave at least one CPU to Ray's own tasks (see the module docstring)
        cpus_per_actor = min(1.0, max(resources.get("CPU", 1.0) - 1.0, 0.25) / size)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours count rows, not blocks
    context.print_on_execution_start = False
    shards = ray.data.from_items([{"shard": i} for i in indices], override_num_blocks=len(indices))
    outcomes = shards.map_batches(
        worker,
        fn_constructor_kwargs=worker_kwargs,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
        num_cpus=cpus_per_actor,
        num_gpus=min(1.0, gpus / size),  # more actors than GPUs share them
    )
    yield size
    for batch in outcomes.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from batch.to_pylist()
