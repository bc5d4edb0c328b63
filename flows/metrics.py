"""Flow metrics for Prometheus, pushed to a Pushgateway.

Why a Pushgateway: flow runs are short batch jobs that are gone before Prometheus scrapes, which is
the case the Pushgateway exists for. The names live in :mod:`robustdx.core.release.pointer` so that the
Grafana "retraining" dashboard and the alert rules can rely on them. Pushing is best-effort: with no
gateway configured (``$ROBUSTDX_PUSHGATEWAY`` unset) nothing is sent, and a gateway that is down is
logged, never allowed to fail a training or a promotion.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from robustdx.core import contracts

log = logging.getLogger(__name__)


def gateway_url(url: str | None = None) -> str | None:
    """``url``, else ``$ROBUSTDX_PUSHGATEWAY`` (``host:port`` or ``http://host:port``), else None."""
    return url or os.environ.get(contracts.ENV_PUSHGATEWAY) or None


def push_metrics(
    flow: str,
    outcome: str,
    seconds: float,
    decision: str | None = None,
    candidate: Mapping[str, float] | None = None,
    production: Mapping[str, float] | None = None,
    url: str | None = None,
) -> bool:
    """Push one flow run's metrics.

    The group key is (flow, outcome, decision): a push replaces only its own group, so the last
    failed run, the last completed run and the last promotion / rejection / rollback all stay visible.

    Returns True when the gateway accepted them, False when none is configured or it failed.
    """
    url = gateway_url(url)
    if url is None:
        return False
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()

    def gauge(name: str) -> Gauge:
        _kind, labels, doc = contracts.FLOW_METRICS[name]
        return Gauge(name, doc, labels, registry=registry)

    now = time.time()
    gauge(contracts.FLOW_LAST_RUN).labels(flow=flow, outcome=outcome).set(now)
    gauge(contracts.FLOW_DURATION).labels(flow=flow).set(seconds)
    if decision is not None:
        gauge(contracts.PROMOTION_LAST).labels(decision=decision).set(now)
    for name, values in ((contracts.CANDIDATE_SCORE, candidate), (contracts.PRODUCTION_SCORE, production)):
        if values:
            g = gauge(name)
            for metric, value in values.items():
                g.labels(metric=metric).set(float(value))
    try:
        group = {"flow": flow, "outcome": outcome, "decision": decision or "none"}
        push_to_gateway(url, job=contracts.PUSH_JOB, grouping_key=group, registry=registry, timeout=5)
    except OSError as err:
        log.warning("could not push flow metrics to %s: %s", url, err)
        return False
    return True
