"""The response bodies are the HTTP contract: field names, optional parts and the OpenAPI examples."""

from __future__ import annotations

import json

import pytest

from robustdx.service.schemas import (
    AttackOut,
    AttributionOut,
    Explanation,
    FeedbackOut,
    FeedbackStats,
    Prediction,
    ReloadResult,
)

pytestmark = pytest.mark.unit

PREDICTION = Prediction(
    label="tumor",
    probabilities={"normal": 0.1, "tumor": 0.9},
    confidence=0.9,
    margin=0.8,
    refer_to_clinician=False,
    decision="tumor",
    model_version="3f9a1c0d2b7e",
)
ATTRIBUTION = AttributionOut(
    target="tumor",
    heatmap_png_base64="iVBORw0KGgo=",
    attribution=[[0.0, 0.5], [0.25, 1.0]],
    convergence_delta=0.003,
    relative_error=0.004,
    baseline="black",
    method="captum:gausslegendre",
)


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (
            Prediction,
            {
                "label",
                "probabilities",
                "confidence",
                "margin",
                "refer_to_clinician",
                "decision",
                "model_version",
                "request_id",
                "image_stored",
            },
        ),  # fmt: skip
        (
            FeedbackOut,
            {"request_id", "reviewer", "label", "note", "created_at", "created", "agrees_with_prediction"},
        ),
        (
            FeedbackStats,
            {"inferences", "feedback", "by_label", "by_model_version", "agreement", "pending_review", "oldest_pending_seconds"},
        ),  # fmt: skip
        (
            AttributionOut,
            {"target", "heatmap_png_base64", "attribution", "convergence_delta", "relative_error", "baseline", "method"},
        ),
        (AttackOut, {"eps", "steps", "prediction", "attribution", "flipped"}),
        (Explanation, {"prediction", "attribution", "attack"}),
        (ReloadResult, {"reloaded", "tag", "version", "previous_tag"}),
    ],
)
def test_field_names_are_the_http_contract(model: type, fields: set[str]) -> None:
    assert set(model.model_fields) == fields


def test_explanation_without_attack_round_trips() -> None:
    e = Explanation(prediction=PREDICTION, attribution=ATTRIBUTION)
    body = json.loads(e.model_dump_json())
    assert body["attack"] is None and body["prediction"]["decision"] == "tumor"
    assert Explanation.model_validate(body) == e


def test_explanation_with_attack_nests_prediction_and_attribution() -> None:
    attack = AttackOut(eps=4 / 255, steps=10, prediction=PREDICTION, attribution=ATTRIBUTION, flipped=False)
    body = json.loads(Explanation(prediction=PREDICTION, attribution=ATTRIBUTION, attack=attack).model_dump_json())
    assert body["attack"]["prediction"]["label"] == "tumor" and body["attack"]["attribution"]["attribution"][1] == [0.25, 1.0]


def test_schema_documents_fields_with_examples() -> None:
    schema = Explanation.model_json_schema()
    pred = schema["$defs"]["Prediction"]
    assert all(p.get("description") for p in pred["properties"].values())
    assert pred["properties"]["label"]["examples"] == ["tumor"]
    assert "description" not in pred  # no class docstring leaks into the OpenAPI spec


def test_missing_field_is_refused() -> None:
    with pytest.raises(ValueError, match="previous_tag"):
        ReloadResult(reloaded=True, tag="robustdx-classifier:a", version="a")  # type: ignore[call-arg]
