"""The service's Prometheus metric objects, built once per process from :mod:`robustdx.core.contracts`.

Why separate: the names, help texts and labels are a contract with the dashboards and alert rules
(fixed in ``core.contracts``); this module only turns them into ``prometheus_client`` objects, once —
creating a metric twice would clash in the process's registry.

Multiprocess mode (``bentoml serve`` sets ``PROMETHEUS_MULTIPROC_DIR``): counters and histograms sum
over workers; gauges use ``livemostrecent`` (the latest value written by a live worker).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from robustdx.core import contracts as names

_PROB_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_DELTA_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_LOCK = threading.Lock()
_METRICS: Metrics | None = None


@dataclass
class Metrics:
    """The service's metric objects, one attribute per name of :data:`robustdx.core.contracts.METRICS`."""

    predictions: Counter
    confidence: Histogram
    margin: Histogram
    referrals: Counter
    drift_mmd: Gauge
    drift_mmd_p: Gauge
    drift_ks: Gauge
    drift_ks_p: Gauge
    drift_psi: Gauge
    drift_window: Gauge
    flip_ratio: Gauge
    robust_margin: Gauge
    robust_samples: Counter
    ig_delta: Histogram
    heartbeat: Gauge
    monitor_errors: Counter
    monitor_dropped: Counter
    model_info: Gauge
    batch_size: Histogram
    explain_refused: Counter
    feedback: Counter
    feedback_agreement: Gauge
    feedback_pending: Gauge
    feedback_pending_age: Gauge
    log_up: Gauge
    log_written: Counter
    log_dropped: Counter


def metrics() -> Metrics:
    """The process's metric objects (created once; re-creating would clash in the registry)."""
    global _METRICS
    with _LOCK:
        if _METRICS is None:
            d = {k: v[2] for k, v in names.METRICS.items()}

            def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
                return Gauge(name, d[name], labels, multiprocess_mode="livemostrecent")

            _METRICS = Metrics(
                predictions=Counter(names.PREDICTIONS, d[names.PREDICTIONS], [names.LABEL_CLASS]),
                confidence=Histogram(names.CONFIDENCE, d[names.CONFIDENCE], buckets=_PROB_BUCKETS),
                margin=Histogram(names.MARGIN, d[names.MARGIN], buckets=_PROB_BUCKETS),
                referrals=Counter(names.REFERRALS, d[names.REFERRALS]),
                drift_mmd=gauge(names.DRIFT_MMD),
                drift_mmd_p=gauge(names.DRIFT_MMD_P),
                drift_ks=gauge(names.DRIFT_KS),
                drift_ks_p=gauge(names.DRIFT_KS_P),
                drift_psi=gauge(names.DRIFT_PSI),
                drift_window=gauge(names.DRIFT_WINDOW),
                flip_ratio=gauge(names.ADV_FLIP_RATIO),
                robust_margin=gauge(names.ROBUST_MARGIN),
                robust_samples=Counter(names.ROBUST_SAMPLES, d[names.ROBUST_SAMPLES]),
                ig_delta=Histogram(names.IG_DELTA, d[names.IG_DELTA], buckets=_DELTA_BUCKETS),
                heartbeat=gauge(names.MONITOR_HEARTBEAT),
                monitor_errors=Counter(names.MONITOR_ERRORS, d[names.MONITOR_ERRORS]),
                monitor_dropped=Counter(names.MONITOR_DROPPED, d[names.MONITOR_DROPPED]),
                model_info=gauge(names.MODEL_INFO, names.INFO_LABELS),
                batch_size=Histogram(names.BATCH_SIZE, d[names.BATCH_SIZE], buckets=_BATCH_BUCKETS),
                explain_refused=Counter(names.EXPLAIN_REFUSED, d[names.EXPLAIN_REFUSED], [names.LABEL_REASON]),
                feedback=Counter(names.FEEDBACK, d[names.FEEDBACK], [names.LABEL_CLASS, names.LABEL_AGREES]),
                feedback_agreement=gauge(names.FEEDBACK_AGREEMENT),
                feedback_pending=gauge(names.FEEDBACK_PENDING),
                feedback_pending_age=gauge(names.FEEDBACK_PENDING_AGE),
                log_up=gauge(names.INFERENCE_LOG_UP),
                log_written=Counter(names.INFERENCE_LOG_WRITTEN, d[names.INFERENCE_LOG_WRITTEN]),
                log_dropped=Counter(names.INFERENCE_LOG_DROPPED, d[names.INFERENCE_LOG_DROPPED]),
            )
            for reason in ("busy", "rate", "deadline"):  # exported at 0 from the start: rate() needs a first sample
                _METRICS.explain_refused.labels(reason=reason)
        return _METRICS
