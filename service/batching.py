"""Adaptive batching of ``/predict`` in which one bad request cannot fail the others.

Why not BentoML's ``batchable=True``: it batches the *inputs* of requests and calls the API function
once per batch, so the images are decoded inside the batch — where a corrupt or unusual image that
passed the header check fails the whole batch, and every innocent request batched with it gets a 500
(the reliability benchmark found exactly that). Decoding in the validator instead would put the
pixel work back on the event loop. So each request decodes its own images (:func:`~robustdx.service.app`)
and only the decoded tensors meet here.

:class:`MicroBatcher` runs the model on one inference thread. While it is busy, requests queue; when
it is free it takes every queued request (up to ``max_batch`` images) that was made for the same
served model and runs them as one batch. No artificial wait: an idle service answers one request at
once, a loaded one batches what arrived during the previous pass — the throughput of batching without
its latency floor. A failure of the forward pass itself fails only the requests of that pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Key = TypeVar("Key")
Out = TypeVar("Out")


@dataclass
class _Job(Generic[Key]):
    key: Key
    x: Any  # [n, C, H, W] tensor of one request
    future: asyncio.Future[Any] = field(repr=False)


class MicroBatcher(Generic[Key, Out]):
    """Batches tensors of concurrent requests for ``run(key, batch) -> list of per-image outputs``.

    ``key`` names what the batch runs on (the served model): requests made before and after a model
    swap never share a batch. ``max_batch`` bounds the images of one pass (a request larger than it
    runs alone).
    """

    def __init__(self, run: Callable[[Key, Any], list[Out]], max_batch: int) -> None:
        self.run = run
        self.max_batch = max_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robustdx-infer")
        self._queue: list[_Job[Key]] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.passes = 0  # forward passes run (for tests and metrics)
        self.images = 0  # images they carried

    async def submit(self, key: Key, x: Any) -> list[Out]:
        """The outputs for the ``len(x)`` images of one request (raises what the forward pass raised)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._serve(), name="robustdx-batcher")
        job = _Job(key, x, loop.create_future())
        self._queue.append(job)
        assert self._wake is not None
        self._wake.set()
        return await job.future

    def _take(self) -> list[_Job[Key]]:
        """The next batch: the oldest job and the queued jobs of the same key that fit beside it."""
        first = self._queue[0]
        batch, size = [first], len(first.x)
        for job in self._queue[1:]:
            if job.key is first.key and size + len(job.x) <= self.max_batch:
                batch.append(job)
                size += len(job.x)
        taken = {id(j) for j in batch}
        self._queue = [j for j in self._queue if id(j) not in taken]
        return batch

    async def _serve(self) -> None:
        import torch

        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [j for j in self._take() if not j.future.cancelled()]  # a client that left costs nothing
            if not batch:
                continue
            sizes = [len(j.x) for j in batch]
            try:
                outs = await loop.run_in_executor(self._pool, self.run, batch[0].key, torch.cat([j.x for j in batch]))
            except Exception as err:  # noqa: BLE001 - the forward pass failed: its requests get the error, others go on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.passes += 1
            self.images += sum(sizes)
            start = 0
            for job, n in zip(batch, sizes, strict=True):
                if not job.future.done():
                    job.future.set_result(outs[start : start + n])
                start += n
