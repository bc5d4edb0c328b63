"""The Alertmanager webhook receiver (flows/alerts.py).

Parsing and the HTTP contract run in-process against a fake emitter; delivery is checked against a
real Prefect server (the session's test harness): the event is read back through Prefect's events
API with the resource id and payload the retrain trigger relies on, and a retried notification does
not create a second event.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.events import Event
from starlette.applications import Starlette

from robustdx.flows import alerts
from robustdx.flows.alerts import DRIFT_EVENT, MAX_BODY_BYTES, build_app, drift_events, parse_message

pytestmark = pytest.mark.unit


def alert(
    status: str = "firing",
    retrain: str | None = "true",
    instance: str | None = "service:3000",
    fingerprint: str = "a1b2c3d4e5f60718",
    starts_at: str = "2025-11-26T01:02:03.456789012Z",
    **labels: str,
) -> dict[str, Any]:
    """One alert as Alertmanager 0.25 sends it."""
    all_labels = {"alertname": "RobustdxDriftHigh", "severity": "warning", "job": "robustdx-service", **labels}
    if retrain is not None:
        all_labels["retrain"] = retrain
    if instance is not None:
        all_labels["instance"] = instance
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": "Input drift", "runbook": "deploy/README.md#robustdxdrifthigh"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=robustdx%3Adrift_detected+%3D%3D+1",
        "fingerprint": fingerprint,
    }


def notification(*items: dict[str, Any], **over: Any) -> dict[str, Any]:
    """An Alertmanager webhook payload, version 4."""
    return {
        "version": "4",
        "groupKey": '{}/{retrain="true"}:{alertname="RobustdxDriftHigh"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "robustdx-retrain",
        "groupLabels": {"alertname": "RobustdxDriftHigh"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(items),
        **over,
    }


class Recorder:
    """A fake emitter that records what it was asked to send (or fails like an unreachable server)."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[Event] = []
        self.fail = fail

    async def __call__(self, events: Sequence[Event]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.extend(events)


class Client:
    """Synchronous calls into the ASGI app through httpx's ASGI transport (no server, no thread)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> Client:
    return Client(build_app(recorder))


# ------------------------------------------------------------------------------------------------
# which alerts become events, and what the events say
# ------------------------------------------------------------------------------------------------
def test_only_firing_retrain_alerts_become_events() -> None:
    message = parse_message(
        json.dumps(
            notification(
                alert(fingerprint="f1"),
                alert(fingerprint="f2", status="resolved"),
                alert(fingerprint="f3", retrain=None, alertname="RobustdxTargetDown"),
                alert(fingerprint="f4", retrain="false"),
                alert(fingerprint="f5", instance=None),
            )
        ).encode()
    )
    events = drift_events(message)
    assert [e.payload["fingerprint"] for e in events] == ["f1", "f5"]
    first, second = events
    assert first.event == DRIFT_EVENT == "robustdx.drift.detected"
    assert first.resource.id == "robustdx.service.service:3000"
    assert second.resource.id == "robustdx.service.service"  # no instance label
    assert first.payload["alertname"] == "RobustdxDriftHigh"
    assert first.payload["labels"]["retrain"] == "true" and first.payload["labels"]["job"] == "robustdx-service"
    assert first.payload["annotations"]["summary"] == "Input drift"
    assert first.payload["startsAt"] == "2025-11-26T01:02:03.456789012Z"


def test_event_id_is_the_same_for_one_alert_episode_and_new_for_the_next() -> None:
    a = alerts.AlertmanagerAlert.model_validate(alert())
    again = alerts.AlertmanagerAlert.model_validate(alert())
    later = alerts.AlertmanagerAlert.model_validate(alert(starts_at="2025-11-27T00:00:00Z"))
    other = alerts.AlertmanagerAlert.model_validate(alert(fingerprint="ffff"))
    assert alerts.event_id(a) == alerts.event_id(again)
    assert len({alerts.event_id(x) for x in (a, later, other)}) == 3


# ------------------------------------------------------------------------------------------------
# HTTP contract
# ------------------------------------------------------------------------------------------------
def test_post_alerts_emits_and_answers_the_count(client: Client, recorder: Recorder) -> None:
    r = client.post("/alerts", json=notification(alert(fingerprint="f1"), alert(fingerprint="f2", retrain=None)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["emitted"] == 1 and body["ignored"] == 1
    assert [str(e.id) for e in recorder.sent] == body["events"]
    r = client.post("/alerts", json=notification(alert(status="resolved"), status="resolved"))
    assert r.json()["emitted"] == 0 and len(recorder.sent) == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"version": "3", "status": "firing", "alerts": []}', "version '3'"),
        (b'{"status": "firing", "alerts": []}', "version None"),
        (b'{"version": "4", "status": "firing"}', "alerts: Field required"),
        (b'{"version": "4", "status": "firing", "alerts": {}}', "alerts"),
        (b'{"version": "4", "status": "burning", "alerts": []}', "status"),
        (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {}}]}', "alerts.0.startsAt"),
        (
            b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {"a": 1}, '
            b'"startsAt": "x", "fingerprint": "f"}]}',
            "alerts.0.labels.a",
        ),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_payload_is_a_400_naming_the_problem(client: Client, recorder: Recorder, body: bytes, needle: str) -> None:
    r = client.post("/alerts", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert not recorder.sent


def test_oversized_payload_is_a_413(client: Client) -> None:
    r = client.post("/alerts", content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_unreachable_prefect_is_a_503_so_alertmanager_retries() -> None:
    client = Client(build_app(Recorder(fail=ConnectionRefusedError("connection refused"))))
    r = client.post("/alerts", json=notification(alert()))
    assert r.status_code == 503 and "retry" in r.json()["error"] and "ConnectionRefusedError" in r.json()["error"]
    metrics = client.get("/metrics").text
    assert 'robustdx_alert_receiver_alerts_total{outcome="failed"} 1.0' in metrics


def test_health_metrics_and_methods(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    client.post("/alerts", json=notification(alert(), alert(retrain=None)))
    client.post("/alerts", content=b"nope")
    metrics = client.get("/metrics").text
    for outcome, n in (("emitted", 1), ("ignored", 1), ("rejected", 1)):
        assert f'robustdx_alert_receiver_alerts_total{{outcome="{outcome}"}} {n}.0' in metrics
    assert client.get("/alerts").status_code == 405


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "robustdx.flows.alerts", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_cli_help_names_the_event_and_the_options() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    for text in ("--host", "--port", "--log-level", DRIFT_EVENT, "PREFECT_API_URL", "POST /alerts"):
        assert text in done.stdout, text


def test_cli_refuses_to_start_without_a_prefect_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)  # no profile that could set an API URL
    done = _cli("--port", "1", env=env)
    assert done.returncode == 2 and "PREFECT_API_URL is not set" in done.stderr


# ------------------------------------------------------------------------------------------------
# a real Prefect server
# ------------------------------------------------------------------------------------------------
async def _stored(ids: list[str], timeout: float = 45.0) -> list[Event]:
    """Read the events back through the Prefect API (the server persists events in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:  # a new filter per poll: its `until` defaults to the time it is created
            flt = EventFilter(event=EventNameFilter(name=[DRIFT_EVENT]), id=EventIDFilter(id=[UUID(i) for i in ids]))
            page = await client.read_events(filter=flt, limit=50)
            if len(page.events) >= len(ids) or time.monotonic() > deadline:
                return page.events
            await asyncio.sleep(0.5)


def test_event_reaches_a_real_prefect_server_once(prefect_server: str) -> None:
    client = Client(build_app())  # the default emitter: Prefect's events client on PREFECT_API_URL
    payload = notification(alert(fingerprint=f"real-{time.time_ns()}", instance="10.0.0.7:3000"))
    r = client.post("/alerts", json=payload)
    assert r.status_code == 200, r.text
    (event_id,) = r.json()["events"]
    assert client.post("/alerts", json=payload).json()["events"] == [event_id]  # Alertmanager retried / repeated
    stored = asyncio.run(_stored([event_id]))
    assert len(stored) == 1, stored
    (event,) = stored
    assert event.resource.id == "robustdx.service.10.0.0.7:3000"
    assert event.payload["alertname"] == "RobustdxDriftHigh"
    assert event.payload["fingerprint"] == payload["alerts"][0]["fingerprint"]
    assert event.payload["labels"]["retrain"] == "true"
