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
from robustdx.flows.alerts import (
    DRIFT_EVENT,
    MAX_ALERTS,
    MAX_BODY_BYTES,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    build_app,
    configured_token,
    drift_events,
    parse_message,
)

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


SECRET = "s3cret-for-tests"


class Client:
    """Synchronous calls into the ASGI app through httpx's ASGI transport (no server, no thread),
    carrying ``Authorization: Bearer <token>`` like Alertmanager's ``http_config.authorization``."""

    def __init__(self, app: Starlette, token: str | None = SECRET) -> None:
        self.app = app
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver", headers=self.headers) as client:
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
    return Client(build_app(recorder, token=SECRET))


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


def test_more_alerts_than_the_cap_are_refused_whole(client: Client, recorder: Recorder) -> None:
    many = [alert(fingerprint=f"f{i}") for i in range(MAX_ALERTS + 1)]
    r = client.post("/alerts", json=notification(*many))
    assert r.status_code == 400 and "alerts" in r.json()["error"]
    assert not recorder.sent
    assert client.post("/alerts", json=notification(*many[:MAX_ALERTS])).json()["emitted"] == MAX_ALERTS


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {SECRET}", f"Bearer {SECRET}x", "Bearer "])
def test_alerts_without_the_bearer_secret_are_a_401_and_emit_nothing(recorder: Recorder, header: str | None) -> None:
    app = build_app(recorder, token=SECRET)
    client = Client(app, token=None)
    r = client.post("/alerts", json=notification(alert()), headers={"authorization": header} if header else {})
    assert r.status_code == 401 and "bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert not recorder.sent
    assert 'robustdx_alert_receiver_alerts_total{outcome="unauthorized"} 1.0' in client.get("/metrics").text
    assert client.get("/healthz").status_code == 200  # probes need no secret


def test_label_values_are_escaped_in_log_lines(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    forged = "svc\n2026-01-01 INFO robustdx.flows.alerts: emitted fake\x1b[31m"  # a real newline and ESC
    with caplog.at_level("INFO", logger="robustdx.flows.alerts"):
        assert client.post("/alerts", json=notification(alert(instance=forged))).status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if "emitted" in r.getMessage()]
    assert "\n" not in line and "\x1b" not in line, line
    assert "svc\\n2026" in line and "\\x1b[31m" in line  # escaped, still readable


def test_unreachable_prefect_is_a_503_so_alertmanager_retries() -> None:
    client = Client(build_app(Recorder(fail=ConnectionRefusedError("connection refused")), token=SECRET))
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
        [sys.executable, "-m", "robustdx.cli", "alert-receiver", *args],
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
    env[TOKEN_ENV] = SECRET
    done = _cli("--port", "1", env=env)
    assert done.returncode == 2 and "PREFECT_API_URL is not set" in done.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "no bearer secret"),
        (("--no-auth", "--host", "0.0.0.0"), "only allowed on a loopback"),
    ],
)
def test_cli_is_closed_by_default(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, TOKEN_FILE_ENV)}
    env["PREFECT_API_URL"] = "http://127.0.0.1:1/api"
    done = _cli("--port", "1", *args, env=env)
    assert done.returncode == 2 and needle in done.stderr, done.stderr


def test_token_comes_from_a_file_first_and_empty_secrets_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(" from-file\n")
    assert configured_token({TOKEN_FILE_ENV: str(secret), TOKEN_ENV: "from-env"}) == "from-file"
    assert configured_token({TOKEN_ENV: "from-env"}) == "from-env"
    assert configured_token({}) is None
    secret.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        configured_token({TOKEN_FILE_ENV: str(secret)})
    with pytest.raises(ValueError, match="cannot read"):
        configured_token({TOKEN_FILE_ENV: str(tmp_path / "missing")})


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
    client = Client(build_app(token=SECRET))  # the default emitter: Prefect's events client on PREFECT_API_URL
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
