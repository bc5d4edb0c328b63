"""service/batching.py: requests that queue while the model is busy share a forward pass, split back in
order; different models never share one; a failing pass fails only its own requests; a request larger
than the batch cap runs alone."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from robustdx.service.batching import MicroBatcher

pytestmark = pytest.mark.unit


class Recorder:
    """``run``: returns each image's first value, records the batches, optionally blocks or fails."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: str | None = None

    def __call__(self, key: str, x: torch.Tensor) -> list[float]:
        self.gate.wait(10)
        self.batches.append((key, len(x)))
        if key == self.fail_on:
            raise RuntimeError("forward pass failed")
        return x[:, 0].tolist()


def rows(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None]


def test_requests_queued_behind_a_busy_model_share_the_next_pass() -> None:
    rec = Recorder()
    batcher: MicroBatcher[str, float] = MicroBatcher(rec, max_batch=8)

    async def scenario() -> list[list[float]]:
        rec.gate.clear()
        first = asyncio.ensure_future(batcher.submit("m", rows(0)))
        await asyncio.sleep(0.05)  # the model is busy with the first request
        rest = [asyncio.ensure_future(batcher.submit("m", rows(i, i + 0.5))) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        rec.gate.set()
        return [await first, *[await r for r in rest]]

    assert asyncio.run(scenario()) == [[0.0], [1.0, 1.5], [2.0, 2.5], [3.0, 3.5]]
    assert rec.batches == [("m", 1), ("m", 6)]
    assert (batcher.passes, batcher.images) == (2, 7)


def test_models_never_share_a_pass_and_a_failure_stays_with_its_requests() -> None:
    rec = Recorder()
    rec.fail_on = "old"
    batcher: MicroBatcher[str, float] = MicroBatcher(rec, max_batch=8)

    async def scenario() -> tuple[object, ...]:
        rec.gate.clear()
        busy = asyncio.ensure_future(batcher.submit("new", rows(9)))
        await asyncio.sleep(0.05)
        a = asyncio.ensure_future(batcher.submit("old", rows(1)))
        b = asyncio.ensure_future(batcher.submit("new", rows(2)))
        await asyncio.sleep(0.05)
        rec.gate.set()
        return tuple(await asyncio.gather(busy, a, b, return_exceptions=True))

    busy, a, b = asyncio.run(scenario())
    assert busy == [9.0] and b == [2.0]
    assert isinstance(a, RuntimeError)
    assert ("old", 1) in rec.batches and all(n == 1 for _, n in rec.batches)


def test_a_request_larger_than_the_cap_runs_alone_and_the_cap_holds() -> None:
    rec = Recorder()
    batcher: MicroBatcher[str, float] = MicroBatcher(rec, max_batch=4)

    async def scenario() -> None:
        rec.gate.clear()
        jobs = [asyncio.ensure_future(batcher.submit("m", rows(*range(n)))) for n in (6, 3, 2, 1)]
        await asyncio.sleep(0.05)
        rec.gate.set()
        await asyncio.gather(*jobs)

    asyncio.run(scenario())
    assert [n for _, n in rec.batches] == [6, 4, 2] or [n for _, n in rec.batches] == [6, 3, 3]
    assert all(n <= 4 for _, n in rec.batches[1:])


def test_an_idle_batcher_answers_at_once() -> None:
    batcher: MicroBatcher[str, float] = MicroBatcher(Recorder(), max_batch=32)

    async def one() -> float:
        t0 = time.perf_counter()
        await batcher.submit("m", rows(1))
        return time.perf_counter() - t0

    assert asyncio.run(one()) < 0.5
