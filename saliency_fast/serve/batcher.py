"""``DynamicBatcher``: the local engine's request batching, in the server's event loop.

Instances wait in one bounded queue. The first one to arrive opens a batch; the batch closes
after ``max_wait_ms`` or at ``max_batch_size`` instances, and its instances go to the model
grouped by operation and parameters, one :meth:`ServedModel.run` per group, in one worker thread
(the event loop keeps accepting requests meanwhile, and those form the next batch).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses

from saliency_fast.serve.logs import log_failure
from saliency_fast.serve.metrics import ServeMetrics
from saliency_fast.serve.model import ServedModel
from saliency_fast.serve.protocol import ExplainParameters, ServeError

RETRY_AFTER_SECONDS = 1


@dataclasses.dataclass
class _Waiting:
    operation: str
    instance: object
    parameters: ExplainParameters | None
    future: asyncio.Future

    def key(self) -> tuple[str, str]:
        return self.operation, "" if self.parameters is None else self.parameters.key()


class DynamicBatcher:
    """``await submit(operation, instances, parameters)`` -> one outcome per instance."""

    def __init__(self, model: ServedModel, max_batch_size: int, max_wait_ms: float, max_queue: int,
                 metrics: ServeMetrics):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="saliency-serve-model")
        self._loop_task = asyncio.create_task(self._batches(), name="saliency-serve-batcher")

    async def stop(self) -> None:
        """Called after the server drained: whatever still waits is refused, the worker finishes."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(ServeError(503, "the server is shutting down"))
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self.metrics.queue_depth.set(0)

    async def submit(self, operation: str, instances: list, parameters: ExplainParameters | None) -> list:
        if not self.ready:
            raise ServeError(503, "the model is not ready", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if len(instances) > self.max_queue:
            raise ServeError(413, f"a request holds at most {self.max_queue} instances, got {len(instances)}",
                             limit=self.max_queue)
        if len(self._waiting) + len(instances) > self.max_queue:
            raise ServeError(503, "the queue is full; retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        loop = asyncio.get_running_loop()
        items = [_Waiting(operation, instance, parameters, loop.create_future()) for instance in instances]
        self._waiting.extend(items)
        self.metrics.queue_depth.set(len(self._waiting))
        self._arrived.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            closes = loop.time() + self.max_wait
            while len(self._waiting) < self.max_batch_size and (left := closes - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch_size, len(self._waiting)))]
            self.metrics.queue_depth.set(len(self._waiting))
            await self._run(loop, [item for item in batch if not item.future.done()])  # done: its caller left

    async def _run(self, loop, batch: list[_Waiting]) -> None:
        groups: dict[tuple[str, str], list[_Waiting]] = {}
        for item in batch:
            groups.setdefault(item.key(), []).append(item)
        for items in groups.values():
            first = items[0]
            self.metrics.batch_size.observe(len(items))
            try:
                outcomes = await loop.run_in_executor(
                    self._worker, self.model.run, first.operation, [i.instance for i in items], first.parameters,
                )
            except Exception as exc:  # noqa: BLE001 - ServedModel.run answers per instance; this is a bug
                log_failure("batch failed", exc)
                outcomes = [ServeError(500, "internal error")] * len(items)
            for item, outcome in zip(items, outcomes):
                if not item.future.done():
                    item.future.set_result(outcome)
