"""Promotion gates (pure decisions) and the promotion lock / audit log of the production pointer."""

from __future__ import annotations

import pytest

from robustdx.core.release.gates import GateConfig, decide

pytestmark = pytest.mark.unit

SERVING = {"clean_acc": 0.85, "robust_acc": 0.60, "attribution": 0.40, "eps": 4 / 255}


def scores(**over: float) -> dict[str, float]:
    return {**SERVING, **over}


def test_equal_model_is_promoted() -> None:
    d = decide(scores(), SERVING, GateConfig())
    assert d.promote and not d.reasons
    assert d.summary.startswith("promoted")


@pytest.mark.parametrize(
    ("metric", "value"),
    [("clean_acc", 0.83), ("robust_acc", 0.58), ("attribution", 0.37)],
)
def test_each_gate_rejects_a_drop_beyond_its_tolerance(metric: str, value: float) -> None:
    d = decide(scores(**{metric: value}), SERVING, GateConfig())
    assert not d.promote
    assert len(d.reasons) == 1 and d.reasons[0].startswith(metric)
    assert "rejected" in d.summary and "serving" in d.summary


def test_drop_within_tolerance_passes_and_better_passes() -> None:
    assert decide(scores(clean_acc=0.845, robust_acc=0.595, attribution=0.385), SERVING, GateConfig()).promote
    assert decide(scores(clean_acc=0.9, robust_acc=0.7, attribution=0.5), SERVING, GateConfig()).promote


def test_trading_robustness_for_accuracy_is_rejected() -> None:
    d = decide(scores(clean_acc=0.95, robust_acc=0.30), SERVING, GateConfig())
    assert not d.promote and any(r.startswith("robust_acc") for r in d.reasons)


def test_first_model_only_faces_the_floors() -> None:
    assert decide(scores(clean_acc=0.6), None, GateConfig()).promote
    d = decide(scores(clean_acc=0.6), None, GateConfig(min_clean_acc=0.7))
    assert not d.promote and d.reasons[0].startswith("clean_acc 0.6000 < floor 0.7")


def test_missing_attribution_on_candidate_is_a_failure_not_a_pass() -> None:
    d = decide(scores(attribution=None), SERVING, GateConfig())  # type: ignore[arg-type]
    assert not d.promote and "candidate has no value" in d.reasons[0]


def test_scores_at_different_eps_are_refused() -> None:
    with pytest.raises(ValueError, match="different ε"):
        decide(scores(eps=8 / 255), SERVING, GateConfig())


def test_gate_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="clean_tolerence"):
        GateConfig.model_validate({"clean_tolerence": 0.1})


def test_recent_images_gate_an_adapted_model_in_and_a_forgetful_or_stale_one_out() -> None:
    serving = {**SERVING, "recent_clean_acc": 0.55}  # the serving model on the snapshot's held-out recent images
    adapted = decide(scores(clean_acc=0.845, recent_clean_acc=0.80), serving, GateConfig())
    assert adapted.promote and any(c.name == "recent_clean_acc" and c.passed for c in adapted.checks)
    forgetful = decide(scores(clean_acc=0.70, recent_clean_acc=0.90), serving, GateConfig())
    assert not forgetful.promote and forgetful.reasons[0].startswith("clean_acc"), "the base gate catches forgetting"
    stale = decide(scores(recent_clean_acc=0.50), serving, GateConfig(recent_tolerance=0.02))
    assert not stale.promote and stale.reasons[0].startswith("recent_clean_acc")
    assert all(c.name != "recent_clean_acc" for c in decide(scores(), SERVING, GateConfig()).checks), "no snapshot, no gate"


def test_class_recall_gate_catches_a_trade_between_classes_the_mean_hides() -> None:
    serving = {**SERVING, "class_recall": {"normal": 0.58, "tumor": 0.88}}
    traded = scores(clean_acc=0.86, class_recall={"normal": 0.81, "tumor": 0.69})  # feedback-pcam-strong's B on base images
    assert decide(traded, serving, GateConfig()).promote, "off by default: only the mean is gated"
    d = decide(traded, serving, GateConfig(class_recall_tolerance=0.05))
    assert not d.promote and d.reasons == ["recall[tumor] 0.6900 < 0.8300 (serving 0.8800 - 0.05)"]
    assert decide(scores(class_recall={"normal": 0.60, "tumor": 0.85}), serving, GateConfig(class_recall_tolerance=0.05)).promote
    first = decide(traded, {**SERVING}, GateConfig(class_recall_tolerance=0.05))  # a serving model scored before the key
    assert first.promote and any(c.name == "recall[tumor]" and "no serving value" in c.reason for c in first.checks)
