"""Keeping ``/explain`` from taking the service down: its own threads, an admission limit, a deadline
that stops the computation, and a per-client rate on the costly attack option.

Why: an explanation costs hundreds of forward/backward passes (IG, and PGD when ``attack_eps > 0``),
a prediction one forward pass. BentoML runs every *sync* API on one shared thread limiter, so a
single anonymous ``/explain`` used to hold ``/predict`` for up to the request timeout — and a
timed-out explanation kept computing after its client had been answered. Here:

* :class:`ExplainGate` runs explanations on a pool of their own (``/explain`` is an async API that
  awaits it), so ``/predict`` keeps its thread; at most ``workers + queue`` explanations are admitted,
  the next one gets a 429 at once instead of waiting in line.
* :class:`Deadlines` is checked inside the model's forward pass (a pre-hook on the classifier head,
  which the BatchNorm-folded twins used by IG and PGD share), so an explanation past its deadline
  raises :class:`DeadlineExceeded` between two PGD steps or IG chunks and its thread is free again.
  The deadline is per thread: ``/predict`` and the monitor run the same model without one.
* :class:`RateLimiter` is a token bucket per client address for explanations of an attacked copy.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(RuntimeError):
    """The computation ran past its deadline and was stopped (raised from inside a forward pass)."""


class Busy(RuntimeError):
    """No room for another explanation now (the message says when to retry)."""


class Deadlines:
    """Per-thread deadlines, checked by a forward pre-hook on the models they are attached to."""

    def __init__(self) -> None:
        self._local = threading.local()

    def attach(self, model: Any) -> None:
        """Check the current thread's deadline at every forward pass of ``model`` (its ``classifier``
        head, shared with the twins built for IG and PGD; else the model itself)."""
        module = getattr(model, "classifier", model)
        local = self._local

        def check(_module: Any, _args: Any) -> None:  # a plain function: deep copies of the model stay possible
            at = getattr(local, "at", None)
            if at is not None and time.monotonic() > at:
                raise DeadlineExceeded("deadline passed")

        module.register_forward_pre_hook(check)

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        """Run the block with a deadline ``seconds`` from now (in this thread only)."""
        self._local.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.at = None


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute on average, bursts up to ``burst``.
    Remembers at most ``max_keys`` clients (the least recently seen are forgotten first)."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token of ``key``; returns 0 when allowed, else the seconds until a token is back."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate if self.rate > 0 else float("inf")


@dataclass(frozen=True)
class ExplainLimits:
    """How much explaining one service does at once, for how long, and how often per client."""

    workers: int = 1
    queue: int = 1
    deadline_seconds: float = 20.0
    attacks_per_minute: float = 6.0
    attack_burst: int = 2


class ExplainGate:
    """Admission, isolation and deadline for explanations (see the module docstring)."""

    def __init__(self, limits: ExplainLimits, deadlines: Deadlines) -> None:
        self.limits = limits
        self.deadlines = deadlines
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="robustdx-explain")
        self._slots = threading.BoundedSemaphore(limits.workers + limits.queue)
        self._attacks = RateLimiter(limits.attacks_per_minute, limits.attack_burst)

    def admit_attack(self, client: str) -> None:
        """Raise :class:`Busy` when ``client`` has used up its attacked-copy explanations for now."""
        wait = self._attacks.take(client)
        if wait > 0:
            raise Busy(
                f"explanations of an attacked copy are limited to {self.limits.attacks_per_minute:g} a minute per client; "
                f"retry in {wait:.0f} s",
            )

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the explanation pool under the deadline.

        Raises:
            Busy: ``workers + queue`` explanations are already admitted.
            DeadlineExceeded: ``fn`` ran past ``deadline_seconds`` and was stopped.
        """
        if not self._slots.acquire(blocking=False):
            raise Busy(
                f"{self.limits.workers + self.limits.queue} explanations are already running or queued; retry in a few seconds"
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed, fn)
        finally:
            self._slots.release()

    def _timed(self, fn: Callable[[], T]) -> T:
        with self.deadlines.within(self.limits.deadline_seconds):
            return fn()
