"""What both engines share: the output directory of a job (lock, manifest, resume) and the
processing of one shard (read, attribute, atomic write).

The finished shard files are the truth: a shard is done exactly when ``shards/part-NNNNN.parquet``
exists, because it only ever appears by an atomic rename. The manifest records the plan, the
config and each shard's outcome for people and tools; it is rewritten atomically as shards finish,
and a job killed between a shard's rename and the manifest's update loses nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator

import pyarrow.parquet as pq

from saliency_fast import __version__
from saliency_fast.jobs import io
from saliency_fast.jobs.attributor import Attributor, JobConfigError
from saliency_fast.jobs.config import JobConfig
from saliency_fast.jobs.plan import Plan, Shard, read_shard

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DONE, FAILED = "done", "failed"
_MANIFEST_EVERY_S = 2.0  # rewriting it after every tiny shard would cost more than the shards


@dataclasses.dataclass
class ShardOutcome:
    index: int
    status: str  # DONE or FAILED
    rows: int
    row_errors: int = 0
    seconds: float = 0.0
    error: str | None = None
    config_error: bool = False  # the config itself cannot run: no other shard will do better


@dataclasses.dataclass
class JobSummary:
    output: str
    shards: int
    resumed: int  # shards found finished when the job started
    done: int  # finished shards, resumed ones included
    rows: int  # rows in finished shards
    row_errors: int  # of those, rows whose ``error`` is set
    seconds: float
    failed: list[ShardOutcome]

    @property
    def ok(self) -> bool:
        return self.done == self.shards


def run_shard(attributor: Attributor, plan: Plan, shard: Shard, config: JobConfig, output: pathlib.Path,
              on_rows: Callable[[int], None] | None = None) -> ShardOutcome:
    """Attribute one shard and write it atomically. Any failure becomes a failed outcome (the
    job goes on with the other shards and the shard is retried on the next run), except a
    :class:`JobConfigError`, which no shard can survive."""
    started = time.perf_counter()
    try:
        table = attributor(read_shard(plan, shard, config), on_rows=on_rows)
        io.write_parquet_atomic(table, output / "shards" / shard.name)
    except JobConfigError:
        raise
    except Exception as exc:
        return ShardOutcome(shard.index, FAILED, shard.rows, seconds=time.perf_counter() - started,
                            error=f"{type(exc).__name__}: {exc}")
    errors = table.num_rows - table.column(io.ERROR_COLUMN).null_count
    return ShardOutcome(shard.index, DONE, table.num_rows, errors, time.perf_counter() - started)


class JobDir:
    """The output directory of one job: ``manifest.json``, ``shards/``, and a lock file so that two
    runs never write the same directory at once."""

    def __init__(self, output):
        self.root = pathlib.Path(output)
        self.shards_dir = self.root / "shards"
        self._plan: Plan | None = None
        self._config: JobConfig | None = None
        self._outcomes: dict[int, ShardOutcome] = {}
        self._resumed = 0
        self._started = 0.0
        self._last_write = 0.0

    @contextlib.contextmanager
    def locked(self) -> Iterator[JobDir]:
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another job is writing to {self.root} (its .lock is held)") from None
            yield self  # the lock goes with the file: a killed job never leaves it held

    def start(self, plan: Plan, config: JobConfig, overwrite: bool = False) -> list[Shard]:
        """Check that this directory holds nothing or the same job, clean what a killed run left,
        write the manifest, and return the shards still to do, in order."""
        self._plan, self._config, self._started = plan, config, time.perf_counter()
        previous = None if overwrite else self._read_manifest()
        if overwrite:
            shutil.rmtree(self.shards_dir)
            self.shards_dir.mkdir()
        elif previous is None and io.shard_files(self.root):
            raise ValueError(f"{self.root} holds shards but no {MANIFEST}; use overwrite or another output directory")
        elif previous is not None and previous.get("fingerprint") != plan.fingerprint(config):
            raise ValueError(
                f"{self.root} holds a job with a different config or input (or the input files changed "
                f"since); use overwrite to start over, or another output directory"
            )
        io.remove_temporaries(self.shards_dir)
        known = {s["index"]: s for s in (previous or {}).get("shards", []) if s.get("status") == DONE}
        pending = []
        for shard in plan.shards:
            outcome = self._finished(shard, known.get(shard.index))
            if outcome is None:
                pending.append(shard)
            else:
                self._outcomes[shard.index] = outcome
        self._resumed = len(self._outcomes)
        self._write_manifest()
        return pending

    def record(self, outcome: ShardOutcome) -> None:
        self._outcomes[outcome.index] = outcome
        if time.perf_counter() - self._last_write >= _MANIFEST_EVERY_S:
            self._write_manifest()

    def finish(self) -> JobSummary:
        self._write_manifest()
        return self.summary()

    def summary(self) -> JobSummary:
        done = [o for o in self._outcomes.values() if o.status == DONE]
        return JobSummary(
            output=str(self.root), shards=len(self._plan.shards), resumed=self._resumed, done=len(done),
            rows=sum(o.rows for o in done), row_errors=sum(o.row_errors for o in done),
            seconds=time.perf_counter() - self._started,
            failed=sorted((o for o in self._outcomes.values() if o.status == FAILED), key=lambda o: o.index),
        )

    def _finished(self, shard: Shard, known: dict | None) -> ShardOutcome | None:
        """The outcome of a shard whose file is already there (None if it is not, or is not ours)."""
        path = self.shards_dir / shard.name
        if not path.exists():
            return None
        if known is not None and known.get("rows") == shard.rows:
            return ShardOutcome(shard.index, DONE, shard.rows, known.get("row_errors", 0), known.get("seconds", 0.0))
        # finished after the manifest was last written: count its row errors from the file itself
        meta = pq.ParquetFile(path).metadata
        if meta.num_rows != shard.rows:
            return None
        errors = pq.read_table(path, columns=[io.ERROR_COLUMN]).column(0)
        return ShardOutcome(shard.index, DONE, shard.rows, meta.num_rows - errors.null_count)

    def _read_manifest(self) -> dict | None:
        path = self.root / MANIFEST
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); use overwrite or another output directory") from exc

    def _write_manifest(self) -> None:
        summary = self.summary()
        shards = []
        for shard in self._plan.shards:
            entry = {"name": shard.name, **dataclasses.asdict(shard), "status": "pending"}
            outcome = self._outcomes.get(shard.index)
            if outcome is not None:
                entry.update({k: v for k, v in dataclasses.asdict(outcome).items() if k not in ("index", "config_error")})
            shards.append(entry)
        manifest = {
            "format": MANIFEST_FORMAT,
            "saliency_fast_version": __version__,
            "fingerprint": self._plan.fingerprint(self._config),
            "config": self._config.to_dict(),
            "plan": {k: v for k, v in self._plan.to_dict().items() if k != "shards"},
            "summary": {
                **{k: v for k, v in dataclasses.asdict(summary).items() if k not in ("failed", "output")},
                "failed": [o.index for o in summary.failed],
            },
            "shards": shards,
        }
        io.write_json_atomic(manifest, self.root / MANIFEST)
        self._last_write = time.perf_counter()
