"""Alertmanager webhook receiver: a firing retrain alert becomes the Prefect event that starts a retrain.

Why this exists: Prefect's own webhooks are a Prefect Cloud feature, so on a self-hosted server the
bridge from Prometheus to the ``retrain/on-drift`` deployment (:mod:`robustdx.flows.schedule`) is this
small ASGI app. Alertmanager routes alerts labelled ``retrain="true"`` (the drift alert,
``deploy/prometheus/rules/alerts.yml``) to ``POST /alerts``; for each *firing* one the receiver emits
the event :data:`DRIFT_EVENT` with resource id ``robustdx.service.<instance label or 'service'>`` and
the alert's name, labels, annotations, ``startsAt`` and fingerprint as payload. Other alerts and
resolved notifications are counted and ignored.

Delivery semantics, chosen for a webhook that Alertmanager retries:

* Events are sent with Prefect's events client *inside the request* (not the fire-and-forget
  background worker behind ``prefect.events.emit_event``), so ``{"emitted": n}`` means the server has
  them; when the Prefect API cannot be reached the answer is 503 and Alertmanager retries.
* Event ids are derived from the alert's fingerprint and ``startsAt``: a retried or repeated
  notification of the same alert episode is the *same* event, which the Prefect server stores and
  triggers on once. A new episode (the alert resolved and fired again) is a new event.

Endpoints: ``POST /alerts`` (Alertmanager webhook JSON, version 4) → ``{"emitted": n, "ignored": m,
"events": [ids]}``, 400 with ``{"error": ...}`` for a malformed payload or more than
:data:`MAX_ALERTS` alerts, 401 without the bearer secret, 413 above :data:`MAX_BODY_BYTES`;
``GET /healthz``; ``GET /metrics`` (``robustdx_alert_receiver_alerts_total{outcome}``).

Closed by default, because a retrain is costly and changes what is served: ``POST /alerts`` needs
``Authorization: Bearer <secret>`` (Alertmanager's ``http_config.authorization``, the secret read from
``ROBUSTDX_ALERT_TOKEN_FILE`` or ``ROBUSTDX_ALERT_TOKEN``), compared in constant time; the CLI refuses
to start without a secret unless told ``--no-auth`` on a loopback address. It binds 127.0.0.1 unless
told otherwise. Label values end up in log lines escaped (a newline in ``instance`` cannot forge a line).

Run it with ``robustdx alert-receiver --host 127.0.0.1 --port 9095`` and ``PREFECT_API_URL``
pointing at the Prefect server; tests build the app with :func:`build_app`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from prefect.events import Event
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DRIFT_EVENT = "robustdx.drift.detected"
RESOURCE_PREFIX = "robustdx.service"
RETRAIN_LABEL = "retrain"
DEFAULT_PORT = 9095
MAX_ALERTS = 32  # per notification; the shipped route sends at most 20 (webhook_configs.max_alerts)
MAX_BODY_BYTES = 256 << 10  # 32 alerts of a few hundred bytes each fit many times over
MAX_LOGGED_CHARS = 200  # a label value in a log line is escaped and cut to this length
TOKEN_ENV = "ROBUSTDX_ALERT_TOKEN"
TOKEN_FILE_ENV = "ROBUSTDX_ALERT_TOKEN_FILE"
# uuid5 namespace of the event ids (fixed: the same alert episode must map to the same id forever)
EVENT_NAMESPACE = uuid.UUID("6f0d7c7e-2a4b-4f7e-9a51-3c1f5e0b8d21")

log = logging.getLogger("robustdx.flows.alerts")

Emitter = Callable[[Sequence[Event]], Awaitable[None]]


class AlertmanagerAlert(BaseModel):
    """One alert of an Alertmanager notification (unknown fields are ignored: newer versions add some)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = Field(min_length=1)  # Alertmanager's field names
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str = Field(min_length=1)


class AlertmanagerMessage(BaseModel):
    """Alertmanager's webhook payload, version 4 (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config)."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    externalURL: str = ""
    alerts: list[AlertmanagerAlert] = Field(max_length=MAX_ALERTS)


class PayloadError(ValueError):
    """The request body is not an Alertmanager version-4 webhook payload (the message says why)."""


def parse_message(body: bytes) -> AlertmanagerMessage:
    """Validate a webhook body.

    Raises:
        PayloadError: not JSON, not version 4, or a required field missing / of the wrong type; the
            message names the field (``alerts.0.fingerprint: Field required``).
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PayloadError(f"body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise PayloadError(f"expected a JSON object (Alertmanager webhook payload), got {type(data).__name__}")
    if data.get("version") != "4":
        raise PayloadError(f"unsupported webhook payload version {data.get('version')!r}: Alertmanager's version '4' expected")
    try:
        return AlertmanagerMessage.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5])
        raise PayloadError(f"invalid Alertmanager payload: {problems}") from None


def printable(value: str) -> str:
    """``value`` safe for one log line: control characters escaped (``\\n``, ``\\x1b``), cut to
    :data:`MAX_LOGGED_CHARS` — label values come from whoever can reach Alertmanager."""
    escaped = value.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= MAX_LOGGED_CHARS else escaped[:MAX_LOGGED_CHARS] + "..."


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def resource_id(labels: dict[str, str]) -> str:
    """``robustdx.service.<instance>`` — what the retrain trigger matches (``robustdx.*``)."""
    return f"{RESOURCE_PREFIX}.{labels.get('instance') or 'service'}"


def event_id(alert: AlertmanagerAlert) -> uuid.UUID:
    """The same id for every notification of one alert episode (fingerprint + start time)."""
    return uuid.uuid5(EVENT_NAMESPACE, f"{alert.fingerprint}/{alert.startsAt}")


def wants_retrain(alert: AlertmanagerAlert) -> bool:
    return alert.status == "firing" and alert.labels.get(RETRAIN_LABEL) == "true"


def drift_events(message: AlertmanagerMessage) -> list[Event]:
    """The Prefect events for the firing ``retrain="true"`` alerts of a notification."""
    events = []
    for alert in message.alerts:
        if not wants_retrain(alert):
            continue
        rid = resource_id(alert.labels)
        events.append(
            Event(
                id=event_id(alert),
                event=DRIFT_EVENT,
                resource={"prefect.resource.id": rid, "prefect.resource.name": rid.removeprefix(RESOURCE_PREFIX + ".")},
                payload={
                    "alertname": alert.labels.get("alertname", ""),
                    "labels": alert.labels,
                    "annotations": alert.annotations,
                    "startsAt": alert.startsAt,
                    "fingerprint": alert.fingerprint,
                    "generatorURL": alert.generatorURL,
                    "externalURL": message.externalURL,
                },
            )
        )
    return events


async def emit_to_prefect(events: Sequence[Event]) -> None:
    """Send the events to the Prefect API of the current settings (``PREFECT_API_URL``) and wait until
    they are written to its websocket; raises when the server cannot be reached."""
    from prefect.events.clients import get_events_client

    async with get_events_client(reconnection_attempts=2) as client:
        for event in events:
            await client.emit(event)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it exceeds :data:`MAX_BODY_BYTES` (checked while streaming)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(emit: Emitter | None = None, *, token: str | None) -> Starlette:
    """The receiver app. ``emit`` sends the events (default: :func:`emit_to_prefect`); tests pass a fake
    to check parsing and error handling without a server. ``token`` is the bearer secret every
    ``POST /alerts`` must carry; ``None`` (explicitly) accepts anyone, for loopback-only use."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    send = emit or emit_to_prefect
    registry = CollectorRegistry()  # per app: no global state, several apps in one test process
    counted = Counter(
        "robustdx_alert_receiver_alerts",
        "Alerts received from Alertmanager, by outcome (emitted / ignored / failed / rejected).",
        ["outcome"],
        registry=registry,
    )
    for outcome in ("emitted", "ignored", "failed", "rejected", "unauthorized"):
        counted.labels(outcome=outcome)

    async def alerts(request: Request) -> Response:
        if token is not None and not bearer_ok(request.headers.get("authorization"), token):
            counted.labels(outcome="unauthorized").inc()
            return JSONResponse(
                {"error": "missing or wrong bearer secret (Alertmanager http_config.authorization)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await _read_body(request)
        if body is None:
            counted.labels(outcome="rejected").inc()
            return _error(413, f"payload larger than {MAX_BODY_BYTES} bytes")
        try:
            message = parse_message(body)
        except PayloadError as err:
            counted.labels(outcome="rejected").inc()
            log.warning("rejected webhook payload: %s", printable(str(err)))
            return _error(400, str(err))
        events = drift_events(message)
        ignored = len(message.alerts) - len(events)
        counted.labels(outcome="ignored").inc(ignored)
        if events:
            try:
                await send(events)
            except Exception as err:  # any failure to deliver means "retry later"
                counted.labels(outcome="failed").inc(len(events))
                log.error("could not emit %d %s event(s): %s", len(events), DRIFT_EVENT, printable(str(err)))
                return _error(503, f"could not emit {DRIFT_EVENT} to the Prefect API ({type(err).__name__}: {err}); retry")
            counted.labels(outcome="emitted").inc(len(events))
            for event in events:
                log.info("emitted %s id=%s resource=%s", DRIFT_EVENT, event.id, printable(event.resource.id))
        return JSONResponse({"emitted": len(events), "ignored": ignored, "events": [str(e.id) for e in events]})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/alerts", alerts, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer secret from ``ROBUSTDX_ALERT_TOKEN_FILE`` (preferred: not in the process table or
    ``docker inspect``) or ``ROBUSTDX_ALERT_TOKEN``; None when neither is set.

    Raises:
        ValueError: the file cannot be read or the secret is empty.
    """
    env = os.environ if environ is None else environ
    if path := env.get(TOKEN_FILE_ENV):
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"{TOKEN_FILE_ENV}={path}: cannot read the secret ({err.strerror})") from None
        if not secret:
            raise ValueError(f"{TOKEN_FILE_ENV}={path} is empty")
        return secret
    if TOKEN_ENV in env:
        if not env[TOKEN_ENV].strip():
            raise ValueError(f"{TOKEN_ENV} is set but empty")
        return env[TOKEN_ENV].strip()
    return None


class ReceiverError(ValueError):
    """The receiver cannot start as asked (the message says what to set)."""


def check_receiver(host: str, no_auth: bool, environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The bearer secret (None with ``no_auth`` on a loopback host) and the Prefect API the events go to.

    Raises:
        ReceiverError: no secret and no ``no_auth``; ``no_auth`` off loopback; ``PREFECT_API_URL`` unset.
    """
    try:
        token = configured_token(environ)
    except ValueError as err:
        raise ReceiverError(str(err)) from None
    if token is None and not no_auth:
        raise ReceiverError(f"no bearer secret: set {TOKEN_FILE_ENV} (or {TOKEN_ENV}), or pass --no-auth on a loopback --host")
    if token is None and not _is_loopback(host):
        raise ReceiverError(
            f"--no-auth is only allowed on a loopback --host, not {host!r}: anyone who can reach it could start a retrain"
        )
    from prefect.settings import PREFECT_API_URL

    api: Any = PREFECT_API_URL.value()
    if not api:
        # Without it Prefect would start a throw-away local server inside this process, and the
        # events would go where no deployment trigger listens.
        raise ReceiverError("PREFECT_API_URL is not set: point it at the Prefect server's API (e.g. http://127.0.0.1:4200/api)")
    return token, str(api)


def run_receiver(host: str, port: int, token: str | None, api: str, log_level: str = "info") -> None:
    """Serve the receiver with uvicorn until stopped (SIGINT / SIGTERM)."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("forwarding %s alerts to the Prefect API at %s", RETRAIN_LABEL, api)
    uvicorn.run(build_app(token=token), host=host, port=port, log_level=log_level)
