"""prefect.yaml (worker-based deployments) and flows/schedule.py (served deployments) must declare the
same two deployments: same flow, cron, drift trigger, cooldown, concurrency and valid parameters."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from robustdx.flows.params import RetrainParams
from robustdx.flows.schedule import DEFAULT_COOLDOWN, DEFAULT_CRON, NIGHTLY, ON_DRIFT, build_deployments
from tests.support.paths import REPO

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def declared() -> dict[str, dict]:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in doc["deployments"]}


def test_same_deployments_and_flow(declared: dict[str, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    assert set(declared) == {NIGHTLY, ON_DRIFT}
    for dep in declared.values():
        assert load_flow_from_entrypoint(dep["entrypoint"]).name == "retrain"
        assert dep["work_pool"]["name"] == "robustdx"
        assert dep["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        RetrainParams.model_validate(dep["parameters"]["params"])  # the UI form accepts them


def test_cron_and_trigger_match_the_served_deployments(declared: dict[str, dict]) -> None:
    nightly, on_drift = build_deployments(RetrainParams())
    assert [s["cron"] for s in declared[NIGHTLY]["schedules"]] == [DEFAULT_CRON]
    assert nightly.schedules[0].schedule.cron == DEFAULT_CRON
    (trigger,) = declared[ON_DRIFT]["triggers"]
    (served,) = on_drift.triggers
    assert set(trigger["expect"]) == served.expect
    assert trigger["match"] == {k: v for k, v in served.match.model_dump().items()}
    assert trigger["posture"] == served.posture.value and trigger["threshold"] == served.threshold
    assert timedelta(seconds=trigger["within"]) == served.within == DEFAULT_COOLDOWN
    assert trigger["parameters"]["params"]["reason"] == served.parameters["params"]["reason"]
    served_feedback = served.parameters["params"]["feedback"]
    for params in (trigger["parameters"]["params"], declared[ON_DRIFT]["parameters"]["params"]):
        for key, value in params["feedback"].items():
            assert served_feedback[key] == value, key  # the drift retrain waits for labels the same way
