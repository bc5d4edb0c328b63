"""Deployments of ``retrain_flow``: nightly on a cron, and on drift.

* ``retrain/nightly`` — a cron schedule (default 02:00 UTC every day).
* ``retrain/on-drift`` — a :class:`DeploymentEventTrigger` on the Prefect event
  ``robustdx.drift.detected`` (emitted by the Alertmanager webhook receiver in
  :mod:`robustdx.flows.alerts` when the drift alert fires, or by anything else with
  ``prefect.events.emit_event``). The trigger is *reactive with threshold 1 and* ``within`` *=
  cooldown*: Prefect fires on the first event, then ignores matching events until the window
  closes, so an alert storm starts one retrain per cooldown (verified in
  tests/integration/test_schedule.py against a real Prefect server). The deployment also has a
  concurrency limit of one, with new runs cancelled while one is running.

Two ways to run them:

* one machine, no worker: :func:`serve` (``robustdx deploy``) — ``prefect.serve`` runs the
  deployments in this process and executes their runs;
* a Prefect server + worker: ``prefect.yaml`` at the repository root declares the same two
  deployments for a process work pool (``prefect deploy --all``, then ``prefect worker start
  --pool robustdx``); see the README.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from robustdx.flows.alerts import DRIFT_EVENT
from robustdx.flows.params import RetrainParams
from robustdx.flows.pipeline import retrain_flow

NIGHTLY = "nightly"
ON_DRIFT = "on-drift"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_COOLDOWN = timedelta(hours=6)


# a drift retrain waits (at most 4 h) for 100 clinician labels on the last day's predictions, then trains anyway
DRIFT_FEEDBACK = {"min_labelled": 100, "wait_seconds": 4 * 3600.0}


def _params(base: RetrainParams, reason: str) -> dict[str, Any]:
    update: dict[str, Any] = {"reason": reason}
    if reason == "drift alert":
        update["feedback"] = base.feedback.model_copy(update=DRIFT_FEEDBACK)
    return {"params": base.model_copy(update=update).model_dump(mode="json")}


def drift_trigger(base: RetrainParams, cooldown: timedelta = DEFAULT_COOLDOWN) -> DeploymentEventTrigger:
    """Start one retrain on the first drift event, then ignore drift events for ``cooldown``."""
    if cooldown <= timedelta(0):
        raise ValueError(f"cooldown must be positive, got {cooldown}")
    return DeploymentEventTrigger(
        name="retrain-on-drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": "robustdx.*"},
        posture="Reactive",
        threshold=1,
        within=cooldown,
        parameters=_params(base, "drift alert"),
    )


def build_deployments(
    base: RetrainParams | None = None,
    cron: str | None = DEFAULT_CRON,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    drift: bool = True,
) -> list[RunnerDeployment]:
    """The nightly and the drift-triggered retrain deployments (``cron=None`` leaves out the nightly one)."""
    base = base or RetrainParams()
    single = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    out: list[RunnerDeployment] = []
    if cron:
        out.append(
            retrain_flow.to_deployment(
                name=NIGHTLY,
                cron=cron,
                parameters=_params(base, "schedule"),
                concurrency_limit=single,
                description="Nightly retrain: sweep, train the best configuration, promote if it passes the gates.",
                tags=["robustdx", "retrain"],
            )
        )
    if drift:
        out.append(
            retrain_flow.to_deployment(
                name=ON_DRIFT,
                triggers=[drift_trigger(base, cooldown)],
                parameters=_params(base, "drift alert"),
                concurrency_limit=single,
                description=f"Retrain when {DRIFT_EVENT} arrives (one run per {cooldown} cooldown).",
                tags=["robustdx", "retrain", "drift"],
            )
        )
    if not out:
        raise ValueError("nothing to deploy: give a cron schedule or keep the drift trigger")
    return out


def serve(deployments: list[RunnerDeployment], limit: int = 1) -> None:
    """Register the deployments and run their flow runs in this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, limit=limit)
