"""The background monitor of the robustdx service: buffers live samples and schedules drift and robustness.

Request path (cheap, O(1) per image): the prediction counter, confidence / margin histograms, and
appending the image's embedding, positive-class score and (for a sampled fraction) the image itself
to bounded buffers. Everything expensive runs in one background daemon thread per worker:

* **drift** (:mod:`.drift`) — every ``drift_every`` new live samples (once the window holds
  ``min_window``), the sliding window of live embeddings and scores against the bundle's reference,
  exported as gauges;
* **robustness** (:mod:`.robustness`) — a fraction ``robust_sample_rate`` of live images is queued
  (bounded; dropped when full, never blocking) and attacked with a small PGD at the serving ε (the
  bundle's ``eval_attack.eps``) against the model's own prediction, on a *private copy* of the model
  so request threads never share it; the flip rate and mean robust margin over the last
  ``robust_window`` attacked images are exported as gauges.

The metric objects and their names: :mod:`.metrics` (from :mod:`robustdx.core.contracts`).
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from robustdx.service.monitoring.drift import measure_drift
from robustdx.service.monitoring.metrics import metrics
from robustdx.service.monitoring.robustness import probe

log = logging.getLogger("robustdx.service.monitoring.monitor")


@dataclass(frozen=True)
class MonitorSettings:
    """Window sizes, schedule and sampling of the monitor (the service sets the ``ROBUSTDX_*`` ones,
    see :meth:`robustdx.service.settings.ServiceSettings.monitor_settings`)."""

    window: int = 64
    min_window: int = 16
    drift_every: int = 16
    n_perm: int = 100
    max_reference: int = 256
    robust_sample_rate: float = 0.1
    robust_queue: int = 32
    robust_window: int = 64
    robust_steps: int = 5
    robust_batch: int = 8
    seed: int = 0
    trim_seconds: float = 10.0


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere). Batches of varying size leave the glibc heap
    fragmented, so a long-running worker's RSS creeps up although nothing leaks (benchmarks/serve_load.py
    measured +13 % over 10,000 requests; ``MALLOC_MMAP_THRESHOLD_`` removed it at a 30 % throughput
    cost). Trimming every few seconds off the request path gives the freed pages back instead."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


class Monitor:
    """Buffers live samples and computes drift and robustness metrics in a background thread."""

    def __init__(self, settings: MonitorSettings | None = None) -> None:
        self.settings = s = settings or MonitorSettings()
        self.m = metrics()
        self._rng = random.Random(s.seed)
        self._cv = threading.Condition()
        self._emb: deque[Tensor] = deque(maxlen=s.window)
        self._score: deque[float] = deque(maxlen=s.window)
        self._images: deque[Tensor] = deque(maxlen=s.robust_queue)
        self._flips: deque[float] = deque(maxlen=s.robust_window)
        self._margins: deque[float] = deque(maxlen=s.robust_window)
        self._new = 0
        self._model: torch.nn.Module | None = None
        self._ref_emb: Tensor | None = None
        self._ref_score: Tensor | None = None
        self._eps = 0.0
        self._info: dict[str, str] | None = None
        self._stop = False
        self.errors = 0
        self.drift_runs = 0
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="robustdx-monitor", daemon=True)
        self._thread.start()

    # ---- called from the service -----------------------------------------------------------
    def set_model(self, model: torch.nn.Module, reference: dict[str, Tensor], eps: float, info: dict[str, str]) -> None:
        """Switch to a (re)loaded model: new reference, private model copy, windows cleared."""
        twin = copy.deepcopy(model).eval()
        for p in twin.parameters():
            p.requires_grad_(False)
        emb = reference["embeddings"].float()
        g = torch.Generator().manual_seed(self.settings.seed)
        if len(emb) > self.settings.max_reference:
            idx = torch.randperm(len(emb), generator=g)[: self.settings.max_reference]
        else:
            idx = torch.arange(len(emb))
        probs = reference.get("probs")
        with self._cv:
            self._model = twin
            self._ref_emb = emb[idx]
            self._ref_score = probs[:, -1].float() if probs is not None and probs.ndim == 2 else None
            self._eps = float(eps)
            self._emb.clear()
            self._score.clear()
            self._images.clear()
            self._flips.clear()
            self._margins.clear()
            self._new = 0
            if self._info is not None:
                self.m.model_info.labels(**self._info).set(0)
            self._info = info
            self.m.model_info.labels(**info).set(1)

    def observe(
        self, classes: list[str], probs: Tensor, embeddings: Tensor, images: Tensor, threshold: float, version: str | None = None
    ) -> None:
        """Record one batch of predictions (request path: counters and buffer appends only).

        ``version`` is the version of the model that computed them: a batch computed by a model that a reload
        has replaced in the meantime is counted but not buffered (its embeddings would not fit the new
        reference — a different architecture would not even stack with the window)."""
        top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
        conf = top2[:, 0]
        margin = top2[:, 0] - top2[:, 1] if top2.shape[1] > 1 else top2[:, 0]
        for i, c in enumerate(probs.argmax(1).tolist()):
            self.m.predictions.labels(classes[c]).inc()
            self.m.confidence.observe(float(conf[i]))
            self.m.margin.observe(float(margin[i]))
            if float(conf[i]) < threshold:
                self.m.referrals.inc()
        rate = self.settings.robust_sample_rate
        with self._cv:
            if version is not None and self._info is not None and version != self._info.get("version"):
                self.m.monitor_dropped.inc(len(probs))
                return
            for i in range(len(probs)):
                self._emb.append(embeddings[i].detach().float().cpu().clone())  # no view: keeps no batch alive
                self._score.append(float(probs[i, -1]))
                if rate > 0 and self._rng.random() < rate:
                    self._images.append(images[i].detach().cpu().clone())
            self._new += len(probs)
            self._cv.notify()

    def observe_ig_delta(self, deltas: Tensor) -> None:
        for d in deltas.abs().tolist():
            self.m.ig_delta.observe(float(d))

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    # ---- background thread -----------------------------------------------------------------
    def _run(self) -> None:
        """The loop: every turn sets the heartbeat gauge, and no exception ends it (a turn that fails is counted
        and logged), so a dead monitor shows as a stale heartbeat instead of silently frozen gauges."""
        torch.set_num_threads(1)  # leave the cores to the request path
        trim = _malloc_trim()
        last_trim = time.monotonic()
        while True:
            self.m.heartbeat.set(time.time())
            with self._cv:
                self._cv.wait_for(lambda: self._stop or self._drift_due() or bool(self._images), timeout=5.0)
                if self._stop:
                    return
            if trim is not None and self.settings.trim_seconds > 0 and time.monotonic() - last_trim > self.settings.trim_seconds:
                trim(0)
                last_trim = time.monotonic()
            try:
                self._turn()
            except Exception:  # a monitoring failure must never take the service (or the monitor) down
                self.errors += 1
                self.m.monitor_errors.inc()
                log.exception("robustdx monitor: metric computation failed")
            finally:
                with self._cv:
                    self._busy = False

    def _turn(self) -> None:
        """One turn's work: a drift computation when due, a batch of the robustness probe."""
        with self._cv:
            self._busy = True
            drift_job = self._drift_snapshot() if self._drift_due() else None
            images = [self._images.popleft() for _ in range(min(len(self._images), self.settings.robust_batch))]
            model, eps = self._model, self._eps
        if drift_job is not None:
            self._compute_drift(*drift_job)
        if images and model is not None:
            self._compute_robustness(model, torch.stack(images), eps)

    def _drift_due(self) -> bool:
        s = self.settings
        return self._ref_emb is not None and len(self._emb) >= s.min_window and self._new >= s.drift_every

    def _drift_snapshot(self) -> tuple[Tensor, Tensor, list[float], Tensor | None]:
        self._new = 0
        return torch.stack(list(self._emb)), self._ref_emb, list(self._score), self._ref_score  # type: ignore[return-value]

    def _compute_drift(self, live: Tensor, ref: Tensor, scores: list[float], ref_scores: Tensor | None) -> None:
        measure_drift(live, ref, scores, ref_scores, self.settings.n_perm, self.settings.seed).publish(self.m)
        self.drift_runs += 1

    def _compute_robustness(self, model: torch.nn.Module, x: Tensor, eps: float) -> None:
        flips, margins = probe(model, x, eps, self.settings.robust_steps)
        with self._cv:
            self._flips.extend(flips)
            self._margins.extend(margins)
            flip_ratio = sum(self._flips) / len(self._flips)
            mean_margin = sum(self._margins) / len(self._margins)
        self.m.flip_ratio.set(flip_ratio)
        self.m.robust_margin.set(mean_margin)
        self.m.robust_samples.inc(len(x))

    def snapshot(self) -> dict[str, Any]:
        """Buffer state; ``idle`` means every queued sample has been processed (tests wait on it)."""
        with self._cv:
            return {
                "window": len(self._emb),
                "robust_queue": len(self._images),
                "attacked": len(self._flips),
                "drift_runs": self.drift_runs,
                "pending_drift": self._new,
                "idle": not self._busy and not self._images and not self._drift_due(),
                "errors": self.errors,
            }
