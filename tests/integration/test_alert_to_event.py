"""Drift on a real service becomes the Prefect event that starts a retrain, end to end.

A tiny model is served by ``deploy/bin/serve.sh`` (``bentoml serve``); a real Prometheus scrapes it
every second with the shipped recording rules and alerts (only the drift alert's ``for:`` shortened
to 2 s, see :func:`tests.deploy.stack.fast_alert_rules`); a real Alertmanager with the shipped routing
posts to the webhook receiver running as its own process (``deploy/bin/alert-receiver.sh``), which
emits ``robustdx.drift.detected`` into a real Prefect server.

Clean patches first: no drift, no alert. Then patches with a stain no training hospital has: the MMD
test rejects, ``RobustdxDriftHigh`` fires with ``retrain="true"``, Alertmanager routes it to the
receiver, the Prefect server records the event for this service's resource id with the alert's
fingerprint, and the ``retrain/on-drift`` deployment's trigger creates exactly one retrain flow run
(registered, not served: the run stays scheduled, so nothing trains here — tests/integration/test_flows.py
runs the retrain itself).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from robustdx.core.util import wait_until
from robustdx.flows.alerts import DRIFT_EVENT
from robustdx.flows.params import RetrainParams
from robustdx.flows.schedule import build_deployments

if TYPE_CHECKING:  # a pytest plugin (registered in tests/conftest.py), so that its asserts are rewritten
    from tests.deploy.stack import AlertPipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def drift_events(resource_id: str, since: float, timeout: float = 60.0) -> list[Any]:
    """The drift events about ``resource_id`` the Prefect server has stored (waits for the first)."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    def query() -> EventFilter:  # rebuilt per poll: the filter's `until` defaults to its creation time
        return EventFilter(
            event=EventNameFilter(name=[DRIFT_EVENT]),
            resource=EventResourceFilter(id=[resource_id]),
            occurred=EventOccurredFilter(since=datetime.fromtimestamp(since, UTC)),
        )

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            page = await client.read_events(filter=query(), limit=50)
            if page.events or time.monotonic() > deadline:
                return page.events
            await asyncio.sleep(0.5)


async def flow_runs(deployment_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_no_drift_no_alert_then_stain_shift_fires_the_alert_and_reaches_prefect(alert_pipeline: AlertPipeline) -> None:
    p = alert_pipeline
    started = time.time() - 1
    (on_drift,) = build_deployments(RetrainParams(), cron=None, cooldown=timedelta(minutes=30))
    on_drift.name = "on-drift-alert-e2e"
    deployment_id = on_drift.apply()

    # clean traffic from the training hospitals: the drift rule evaluates to 0 and nothing fires
    p.send(40, shifted=False, start=20_000)
    p.prom.wait_for('robustdx:drift_detected{job="robustdx-service"}', lambda v: v == [0.0], timeout=30)
    time.sleep(3)  # longer than the shortened for: 2s — a drift alert would be firing by now
    assert p.prometheus_alert() is None, p.prometheus_alert()
    assert p.alertmanager_alerts() == []

    # a stain no training hospital has: MMD rejects, the alert fires with retrain="true"
    p.send(40, shifted=True, start=30_000)
    p.prom.wait_for('robustdx:drift_detected{job="robustdx-service"}', lambda v: v == [1.0], timeout=30)
    firing = wait_until(
        p.prometheus_alert,
        60,
        "RobustdxDriftHigh firing in Prometheus",
        ok=lambda alert: bool(alert) and alert["state"] == "firing",
        interval=0.5,
    )
    assert firing["labels"]["retrain"] == "true" and firing["labels"]["severity"] == "warning"
    assert firing["labels"]["instance"] == p.resource_id.removeprefix("robustdx.service.")

    # Alertmanager has it and routed it to the receiver
    (am_alert,) = wait_until(p.alertmanager_alerts, 60, "the alert in Alertmanager", interval=0.5)
    assert am_alert["receivers"] == [{"name": "robustdx-retrain"}]

    # the receiver emitted the event, and the Prefect server stored it
    events = asyncio.run(drift_events(p.resource_id, since=started))
    assert events, f"no {DRIFT_EVENT} for {p.resource_id} in Prefect; receiver log:\n{p.receiver.tail()}"
    event = events[0]
    assert event.payload["alertname"] == p.alert_name == "RobustdxDriftHigh"
    assert event.payload["fingerprint"] == am_alert["fingerprint"]
    assert event.payload["labels"]["retrain"] == "true"
    assert event.payload["annotations"]["runbook"].endswith("#robustdxdrifthigh")
    emitted = httpx.get(f"{p.receiver.url}/metrics", timeout=10).text
    assert 'robustdx_alert_receiver_alerts_total{outcome="emitted"}' in emitted

    # ... and the drift trigger turned it into one retrain run (later notifications fall in the cooldown)
    runs = wait_until(lambda: asyncio.run(flow_runs(deployment_id)), 60, "a retrain/on-drift flow run", interval=0.5)
    time.sleep(3)
    runs = asyncio.run(flow_runs(deployment_id))
    assert len(runs) == 1, [r.name for r in runs]
    assert runs[0].parameters["params"]["reason"] == "drift alert"
