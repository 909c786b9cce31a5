"""A TracIn index over a training set: projected per-example gradients written as a data-set job,
then searched by inner product for each test example's proponents and opponents.

Layout of the output directory::

    metadata.json                      what the job is (layers, projection, checkpoints, data)
    projections.safetensors            the random projections, so a resumed job uses the same
    checkpoint-<c>/part-<s>.safetensors  rows of shard s under checkpoint c: "vectors" [rows, dim]
                                       (float32, already times sqrt(lr_c))

Shards are the outer loop, checkpoints the inner: each checkpoint is loaded once, and the
modules all checkpoints share run once per batch (:mod:`saliency_fast.influence.shared_forward`).
Every file appears by an atomic rename, so a shard is done exactly when its file exists: a job
killed at any instant resumes with nothing lost or doubled. Searching streams the shards into the index one at a time
(checkpoints side by side), never holding full-size gradients.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import pathlib
import time
from collections.abc import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from saliency_fast import __version__
from saliency_fast._ray_pool import check_pool_arguments, map_shards
from saliency_fast._files import atomic_path, atomic_write_text
from saliency_fast.influence import gradients as grads_lib
from saliency_fast.influence import projected, shared_forward
from saliency_fast.influence.search import InnerProductIndex

METADATA = "metadata.json"
PROJECTIONS = "projections.safetensors"
ENGINES = ("local", "ray")
FORMAT = 2  # 2: bias folded into the input side, projections fitted (PCA) or orthogonal
PROJECTION_RULE = (
    "per Linear layer, vec(P_out^T [G, b] P_in): the d_out x (d_in + 1) weight-and-bias gradient, projected on each "
    "side (Kronecker-factored, k_in * k_out <= projection_dim); a side at full width is not projected and a layer "
    "whose whole gradient has <= projection_dim entries is kept exact; 'pca': P_in, P_out the leading eigenvectors of "
    "sum G^T G and sum G G^T over the first fit_rows training rows (all checkpoints, learning-rate weighted), the split "
    "(k_in a power of two) that keeps most of their energy; 'random': random orthogonal, the budget split evenly"
)

# (inputs tuple for model(*inputs), targets) of rows start:stop
BatchFn = Callable[[int, int], tuple[tuple, torch.Tensor]]


def shard_path(output: pathlib.Path, checkpoint: int, shard: int) -> pathlib.Path:
    return output / f"checkpoint-{checkpoint}" / f"part-{shard:05d}.safetensors"


@contextlib.contextmanager
def _locked(output: pathlib.Path):
    output.mkdir(parents=True, exist_ok=True)
    with open(output / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RuntimeError(f"output {str(output)!r} is in use by another influence job") from exc
        for tmp in output.rglob(".*.tmp"):  # what a killed writer left behind
            tmp.unlink(missing_ok=True)
        yield


def _recorded(output: pathlib.Path, job: dict) -> bool:
    """Whether ``output`` already holds this job (resume); ValueError when it holds another."""
    existing = output / METADATA
    if not existing.exists():
        return False
    recorded = json.loads(existing.read_text())
    if recorded.get("job") != job:
        different = sorted(k for k in job if recorded.get("job", {}).get(k) != job[k])
        raise ValueError(
            f"output {str(output)!r} holds another influence job (it differs in {', '.join(different)}); "
            "use a new directory or pass overwrite=True"
        )
    return True


def _record(output: pathlib.Path, job: dict, projections: dict[str, torch.Tensor], layer_dims: dict) -> None:
    """The projections, then the metadata (the job exists once its metadata does)."""
    if projections:
        with atomic_path(output / PROJECTIONS) as tmp:
            save_file(projections, str(tmp))
    metadata = {"format": FORMAT, "version": __version__, "job": job, "layer_dims": layer_dims,
                "projection_rule": PROJECTION_RULE}
    atomic_write_text(output / METADATA, json.dumps(metadata, indent=1))


def build_index(
    output,
    model: nn.Module,
    layers: Sequence[str],
    checkpoints: Sequence[tuple[str, float]],
    load_checkpoint: Callable[[nn.Module, str], None],
    n_rows: int,
    batch_fn: BatchFn,
    loss_fn,
    *,
    data_fingerprint: str,
    projection_dim: int | None = 256,
    projection: str = "pca",
    fit_rows: int = 256,
    seed: int = 0,
    shard_size: int = 1024,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    engine: str = "local",
    actors: int | None = None,
    cpus_per_actor: float | None = None,
) -> dict:
    """Write (or finish) the projected training gradients of every checkpoint into ``output``;
    returns the job's metadata. ``checkpoints`` are ``(path, learning_rate)`` pairs.
    ``projection``: ``"pca"`` fits each layer's projection to the gradients of the first
    ``fit_rows`` training rows, ``"random"`` draws it from ``seed``
    (:func:`saliency_fast.influence.projected.make_projections`). ``engine="ray"`` writes the
    shards on a Ray actor pool (``actors``, ``cpus_per_actor``: as the attribution jobs' Ray
    engine; the model, load function and ``batch_fn`` travel to the actors, and ``output`` must be
    on a file system they share); the projections are fitted here first either way."""
    output = pathlib.Path(output)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_pool_arguments(actors, cpus_per_actor)
    resolved = projected.check_linear_layers(model, layers)
    projected.check_projection(projection_dim, projection)
    if isinstance(fit_rows, bool) or not isinstance(fit_rows, int) or fit_rows < 1:
        raise ValueError(f"fit_rows must be a positive int, got {fit_rows!r}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    if overwrite and output.exists():
        import shutil

        shutil.rmtree(output)
    job = {
        "layers": list(layers),
        "projection_dim": projection_dim,
        "projection": projection if projection_dim is not None else None,
        "fit_rows": min(fit_rows, n_rows) if projection_dim is not None and projection == "pca" else None,
        "seed": seed if projection_dim is not None and projection == "random" else None,
        "checkpoints": [[str(path), float(lr)] for path, lr in checkpoints],
        "rows": n_rows,
        "shard_size": shard_size,
        "data": data_fingerprint,
    }
    n_shards = -(-n_rows // shard_size)
    with _locked(output):
        resuming = _recorded(output, job)
        todo = {}  # shard -> the checkpoints whose part of it is still to write
        for s in range(n_shards):
            missing = [c for c in range(len(checkpoints)) if not shard_path(output, c, s).exists()]
            if missing:
                todo[s] = missing
        total = len(checkpoints) * n_rows
        done_rows = total - sum(len(cs) * (min(n_rows, (s + 1) * shard_size) - s * shard_size) for s, cs in todo.items())
        started = time.perf_counter()
        with tqdm(total=total, initial=done_rows, unit="ex", desc="training gradients", disable=not progress) as bar:
            if todo or not resuming:
                with _checkpoints_shared(model, resolved, checkpoints, load_checkpoint) as states:
                    sample = None
                    if resuming:
                        projections = load_projections(output)
                    else:
                        sample = _fit_sample(states, resolved, job, batch_fn, loss_fn, batch_size)
                        projections = projected.make_projections(
                            resolved, projection_dim, seed, projection, sample, [lr for _, lr in checkpoints])
                        _record(output, job, projections, projected.fitted_dims(resolved, projections))
                    if engine == "local":
                        for s, missing in todo.items():
                            # the fitting rows' factors give shard 0's first vectors (not computed twice)
                            head = None
                            if s == 0 and sample is not None and job["fit_rows"] <= shard_size:
                                head = [projected.vectors_from_factors(resolved, projections, factors)
                                        for factors in sample]
                            _write_shard(output, s, missing, states, checkpoints, resolved, projections,
                                         range(s * shard_size, min(n_rows, (s + 1) * shard_size)), batch_fn,
                                         loss_fn, batch_size, bar, head)
                if todo and engine == "ray":
                    _write_on_ray(output, model, checkpoints, load_checkpoint, batch_fn, loss_fn, batch_size, list(todo),
                                  actors, cpus_per_actor, bar)
    metadata = json.loads((output / METADATA).read_text())
    metadata["seconds"] = time.perf_counter() - started
    return metadata


def _fit_sample(states, resolved, job, batch_fn, loss_fn, batch_size) -> list | None:
    """Per checkpoint, per layer, the factors ``(a, g)`` of the first ``fit_rows`` training rows
    (None unless the projection is fitted); batches outer, checkpoints inner, as in the shards."""
    if not job["fit_rows"]:
        return None
    parts = [[] for _ in range(len(states))]
    for b in range(0, job["fit_rows"], batch_size):
        inputs, targets = batch_fn(b, min(job["fit_rows"], b + batch_size))
        for c in range(len(states)):
            states.activate(c)
            parts[c].append(grads_lib.linear_factors(states.model, resolved, inputs, targets, loss_fn, "sum"))
    return [[tuple(grads_lib.cat_steps([p[i][j] for p in batches]) for j in range(2)) for i in range(len(resolved))]
            for batches in parts]


def _checkpoints_shared(model, resolved, checkpoints, load_checkpoint):
    return shared_forward.checkpoints_shared(model, [path for path, _ in checkpoints], load_checkpoint,
                                             [name for name, _ in resolved], grads_lib.layer_parameters(resolved))


def _write_shard(output, shard, missing, states, checkpoints, resolved, projections, rows, batch_fn, loss_fn,
                 batch_size, bar, head=None) -> None:
    """Shard ``shard``'s vectors under each checkpoint in ``missing``: batches outer (each
    batch built once), checkpoints inner; each file appears by an atomic rename. ``head``: per
    checkpoint, the vectors of the shard's first rows, already computed."""
    parts = {c: [] if head is None else [head[c]] for c in missing}
    done = 0 if head is None else head[0].shape[0]
    if bar is not None:
        bar.update(done * len(missing))
    for b in range(rows.start + done, rows.stop, batch_size):
        inputs, targets = batch_fn(b, min(rows.stop, b + batch_size))
        for c in missing:
            states.activate(c)
            parts[c].append(projected.projected_gradients(states.model, resolved, projections, inputs, targets, loss_fn))
            if bar is not None:
                bar.update(parts[c][-1].shape[0])
    for c in missing:
        vectors = torch.cat(parts[c]) * float(checkpoints[c][1]) ** 0.5
        with atomic_path(shard_path(output, c, shard)) as tmp:
            save_file({"vectors": vectors.cpu().contiguous()}, str(tmp))


class IndexShardWorker:
    """Ray Data actor of the index job: the model with every checkpoint loaded once (and the
    shared modules memoized, as locally); batches of shard indices in, one outcome row per shard
    out (a failure is an outcome, not an exception: it would fail the whole dataset)."""

    def __init__(self, output, model, checkpoints, load_checkpoint, batch_fn, loss_fn, batch_size):
        self.output = pathlib.Path(output)
        self.job = job_metadata(output)["job"]
        self.model, self.checkpoints, self.batch_fn, self.loss_fn = model, checkpoints, batch_fn, loss_fn
        self.batch_size = batch_size
        self.resolved = projected.check_linear_layers(model, self.job["layers"])
        self.projections = load_projections(output)
        self._scope = contextlib.ExitStack()  # held for the actor's life
        self.states = self._scope.enter_context(_checkpoints_shared(model, self.resolved, checkpoints, load_checkpoint))

    def __call__(self, batch):
        import pyarrow as pa

        outcomes = []
        for s in batch.column("shard").to_pylist():
            started = time.perf_counter()
            rows = range(s * self.job["shard_size"], min(self.job["rows"], (s + 1) * self.job["shard_size"]))
            missing = [c for c in range(len(self.checkpoints)) if not shard_path(self.output, c, s).exists()]
            error = None
            try:
                _write_shard(self.output, s, missing, self.states, self.checkpoints, self.resolved, self.projections,
                             rows, self.batch_fn, self.loss_fn, self.batch_size, None)
            except Exception as exc:  # the shard is retried by the next run of the job
                error = f"{type(exc).__name__}: {exc}"
            outcomes.append({"shard": s, "rows": len(rows) * len(missing), "seconds": time.perf_counter() - started,
                             "error": error})
        return pa.Table.from_pylist(outcomes, schema=pa.schema([("shard", pa.int64()), ("rows", pa.int64()),
                                                                ("seconds", pa.float64()), ("error", pa.string())]))


def _write_on_ray(output, model, checkpoints, load_checkpoint, batch_fn, loss_fn, batch_size, shards, actors,
                  cpus_per_actor, bar) -> None:
    """The pending ``shards`` on a Ray actor pool (:func:`saliency_fast._ray_pool.map_shards`);
    RuntimeError naming the shards that failed once all have run (their files are missing, so the
    next run of the job redoes them)."""
    device = next(model.parameters()).device
    outcomes = map_shards(
        IndexShardWorker,
        {"output": str(output.resolve()), "model": model, "checkpoints": list(checkpoints),
         "load_checkpoint": load_checkpoint, "batch_fn": batch_fn, "loss_fn": loss_fn, "batch_size": batch_size},
        shards, actors=actors, cpus_per_actor=cpus_per_actor, use_gpus=device.type == "cuda",
    )
    next(outcomes)  # the pool's size
    failed = []
    for outcome in outcomes:
        bar.update(outcome["rows"])
        if outcome["error"]:
            failed.append(f"shard {outcome['shard']}: {outcome['error']}")
    if failed:
        raise RuntimeError(f"{len(failed)} shard(s) of the influence index failed (run the job again to retry them): "
                           + "; ".join(failed))


def load_projections(output) -> dict[str, torch.Tensor]:
    path = pathlib.Path(output) / PROJECTIONS
    return load_file(str(path)) if path.exists() else {}


def job_metadata(output) -> dict:
    path = pathlib.Path(output) / METADATA
    if not path.exists():
        raise FileNotFoundError(f"{output} holds no influence index (no {METADATA})")
    return json.loads(path.read_text())


def open_index(output, backend: str | None = None) -> InnerProductIndex:
    """The finished index of ``output``, its shards streamed in (checkpoints side by side)."""
    output = pathlib.Path(output)
    job = job_metadata(output)["job"]
    n_shards = -(-job["rows"] // job["shard_size"])
    index = InnerProductIndex(backend=backend)
    for s in range(n_shards):
        parts = []
        for c in range(len(job["checkpoints"])):
            path = shard_path(output, c, s)
            if not path.exists():
                raise FileNotFoundError(f"influence index {str(output)!r} is unfinished: {path.name} of checkpoint {c} "
                                        "is missing (run the job again to finish it)")
            parts.append(load_file(str(path))["vectors"])
        index.add(torch.cat(parts, dim=1))
    return index


def query_vectors(
    model: nn.Module,
    output,
    load_checkpoint: Callable[[nn.Module, str], None],
    n_rows: int,
    batch_fn: BatchFn,
    loss_fn,
    batch_size: int = 32,
) -> torch.Tensor:
    """Test examples' vectors under the index's layers, projections and checkpoints."""
    job = job_metadata(output)["job"]
    resolved = projected.check_linear_layers(model, job["layers"])
    projections = load_projections(output)
    checkpoints = [(path, lr) for path, lr in job["checkpoints"]]
    parts = [[] for _ in checkpoints]
    with _checkpoints_shared(model, resolved, checkpoints, load_checkpoint) as states:
        for b in range(0, n_rows, batch_size):
            inputs, targets = batch_fn(b, min(n_rows, b + batch_size))
            for c in range(len(checkpoints)):
                states.activate(c)
                parts[c].append(projected.projected_gradients(model, resolved, projections, inputs, targets, loss_fn))
    return torch.cat([torch.cat(rows) * float(lr) ** 0.5 for rows, (_, lr) in zip(parts, checkpoints)], dim=1)
