"""The inference log writer: every prediction becomes a row of the feedback database, off the request path.

Why a queue and a thread: a prediction must not wait for a disk or a database, and must not fail because the
database is down. Requests put rows on a bounded queue (never blocking: when it is full the row is dropped and
counted); one thread writes them in batches, storing the opted-in images first (content-addressed). While the
database is unreachable the thread retries with back-off, the ``up`` gauge reads 0 and the queue bounds the
memory kept meanwhile. Feedback (:meth:`InferenceLog.flush`) waits for the rows already queued, so a clinician
can answer a prediction the moment the client has it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.store import FeedbackStore, InferenceRecord

log = logging.getLogger("robustdx.service.records")


@dataclass(frozen=True)
class Logged:
    """One queued row, with the image's bytes when the client asked for it to be stored."""

    record: InferenceRecord
    image: bytes | None = None


@dataclass
class LogHooks:
    """What the writer reports to the metrics (plain callables: the tests pass recorders)."""

    up: Callable[[bool], None]
    written: Callable[[int], None]
    dropped: Callable[[int], None]
    housekeeping: Callable[[FeedbackStore], None] = lambda _store: None


class InferenceLog:
    """A bounded queue of :class:`Logged` rows and the thread that writes them to ``store`` and ``images``."""

    def __init__(
        self,
        store: FeedbackStore,
        images: ImageStore,
        hooks: LogHooks,
        capacity: int = 2000,
        batch: int = 256,
        housekeeping_seconds: float = 15.0,
    ) -> None:
        self.store, self.images, self.hooks = store, images, hooks
        self._queue: queue.Queue[Logged] = queue.Queue(maxsize=capacity)
        self._batch = batch
        self._housekeeping_seconds = housekeeping_seconds
        self._idle = threading.Condition()
        self._busy = 0  # rows taken off the queue and not yet written
        self.ready = threading.Event()  # the schema is migrated (the database was reachable once)
        self._migrate()  # once before the service is ready, so its first requests do not share the CPU with it
        threading.Thread(target=self._run, name="robustdx-inference-log", daemon=True).start()

    def _migrate(self) -> bool:
        try:
            self.store.migrate()
        except Exception as err:  # noqa: BLE001 - unreachable or refusing: serve on, retry later
            self.hooks.up(False)
            log.warning("inference log: database %s not ready (%s); serving without it until it is", _safe(self.store.url), err)
            return False
        self.ready.set()
        self.hooks.up(True)
        return True

    def submit(self, rows: list[Logged]) -> None:
        """Queue rows without blocking; rows that do not fit are dropped and counted."""
        dropped = 0
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                dropped += 1
        if dropped:
            self.hooks.dropped(dropped)
            log.warning("inference log queue full: %d rows dropped (is the database down?)", dropped)

    def flush(self, timeout: float) -> bool:
        """Wait until every row queued so far is written; False on timeout (the database is slow or down)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        backoff = 0.5
        while not self.ready.is_set():  # the database may come up after the service: keep trying
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            self._migrate()
        last_housekeeping = 0.0
        while True:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                first = None
            rows = [] if first is None else [first]
            while first is not None and len(rows) < self._batch:
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if rows:
                self._write(rows)
            if time.monotonic() - last_housekeeping > self._housekeeping_seconds:
                last_housekeeping = time.monotonic()
                try:
                    self.hooks.housekeeping(self.store)
                except Exception:  # noqa: BLE001 - metrics only
                    log.exception("inference log housekeeping failed")

    def _write(self, rows: list[Logged]) -> None:
        backoff = 0.5
        while True:
            try:
                for row in rows:
                    if row.image is not None:
                        self.images.put(row.image)
                self.store.log_inferences([r.record for r in rows])
                self.hooks.up(True)
                self.hooks.written(len(rows))
                break
            except Exception as err:  # noqa: BLE001 - keep the rows, retry; the queue bounds what piles up behind
                self.hooks.up(False)
                log.warning("inference log: writing %d rows failed (%s); retrying in %.0f s", len(rows), err, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        with self._idle:
            for _ in rows:
                self._queue.task_done()
            self._idle.notify_all()


def _safe(url: str) -> str:
    """A database URL without its password (for logs)."""
    head, at, tail = url.rpartition("@")
    scheme, sep, _credentials = head.partition("://")
    return f"{scheme}://***@{tail}" if at and sep else url
