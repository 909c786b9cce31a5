"""The local engine: the shards of a job, one after the other, in this process."""

from __future__ import annotations

import os

from tqdm.auto import tqdm

from saliency_fast.jobs.attributor import Attributor
from saliency_fast.jobs.config import JobConfig
from saliency_fast.jobs.plan import make_plan
from saliency_fast.jobs.runner import FAILED, JobDir, JobSummary, run_shard


def run_local(config: JobConfig, input: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False,
              progress: bool = True) -> JobSummary:
    """Attribute every row of ``input`` into ``output`` (see :mod:`saliency_fast.jobs`).

    Finished shards of an earlier run of the same job are kept (resume); a shard that fails is
    reported in the summary and the manifest and retried by the next run.
    """
    plan = make_plan(input, config)
    job = JobDir(output)
    with job.locked():
        pending = job.start(plan, config, overwrite=overwrite)
        attributor = Attributor(config)
        finished_rows = plan.rows - sum(s.rows for s in pending)
        with tqdm(total=plan.rows, initial=finished_rows, unit="text", desc="attributing", disable=not progress) as bar:
            try:
                for shard in pending:
                    outcome = run_shard(attributor, plan, shard, config, job.root, on_rows=bar.update)
                    job.record(outcome)
                    if outcome.status == FAILED:
                        bar.write(f"shard {shard.name} failed: {outcome.error}")
            finally:
                summary = job.finish()
    return summary
