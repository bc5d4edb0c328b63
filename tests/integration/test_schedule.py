"""Deployments against a real Prefect server (test harness): the nightly cron and the drift trigger.

The drift deployment is registered (not served), so runs the trigger creates stay scheduled and
nothing trains: what is tested is the server's automation — a burst of drift events starts exactly
one run (the cooldown), with the parameters recording why it runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest

from robustdx.flows.alerts import DRIFT_EVENT
from robustdx.flows.params import RetrainParams, SweepParams
from robustdx.flows.schedule import NIGHTLY, ON_DRIFT, build_deployments, drift_trigger

pytestmark = [pytest.mark.integration]

BASE = RetrainParams(sweep=SweepParams(num_samples=1), reason="ignored")


async def _emit(n: int, resource: str = "robustdx.service.test") -> None:
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async with get_events_client() as client:
        for i in range(n):
            await client.emit(Event(event=DRIFT_EVENT, resource={"prefect.resource.id": resource}, payload={"i": i}))


async def _runs(deployment_id: uuid.UUID) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


async def _deployment(deployment_id: uuid.UUID):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_deployment(deployment_id)


def test_burst_of_drift_events_starts_one_run_and_cron_is_set(prefect_server: str) -> None:
    nightly, on_drift = build_deployments(BASE, cron="0 2 * * *", cooldown=timedelta(minutes=10))
    ids = {d.name: d.apply() for d in (nightly, on_drift)}

    dep = asyncio.run(_deployment(ids[NIGHTLY]))
    assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
    assert dep.parameters["params"]["reason"] == "schedule"

    # Bursts of drift events every 4 s until the first run appears (the server picks up a new
    # automation within a few seconds), then one more burst: all inside the cooldown, so one run.
    deadline, runs, bursts = time.monotonic() + 60, [], 0
    while time.monotonic() < deadline and not runs:
        asyncio.run(_emit(3))
        bursts += 1
        time.sleep(4)
        runs = asyncio.run(_runs(ids[ON_DRIFT]))
    assert runs, "no run within 60 s of the first drift events"
    asyncio.run(_emit(3))
    time.sleep(8)
    runs = asyncio.run(_runs(ids[ON_DRIFT]))
    assert len(runs) == 1, f"{len(runs)} runs for {3 * (bursts + 1)} events in {bursts + 1} bursts: {[r.name for r in runs]}"
    assert runs[0].parameters["params"]["reason"] == "drift alert"
    assert runs[0].parameters["params"]["sweep"]["num_samples"] == 1


def test_events_from_elsewhere_do_not_trigger(prefect_server: str) -> None:
    (on_drift,) = build_deployments(BASE, cron=None, cooldown=timedelta(minutes=10))
    on_drift.name = "on-drift-foreign"
    dep_id = on_drift.apply()
    for _ in range(3):
        asyncio.run(_emit(2, resource="other.service"))
        time.sleep(4)
    assert asyncio.run(_runs(dep_id)) == []


def test_trigger_and_deployment_validation() -> None:
    with pytest.raises(ValueError, match="cooldown must be positive"):
        drift_trigger(BASE, timedelta(0))
    with pytest.raises(ValueError, match="nothing to deploy"):
        build_deployments(BASE, cron=None, drift=False)
