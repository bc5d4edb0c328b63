"""The service's response bodies (pydantic models BentoML puts in the OpenAPI spec at ``/docs.json``).

Why separate: they are the HTTP contract — field names and meanings that clients, the demo and the
tests read — and they change only on purpose, apart from the service class that fills them
(:mod:`robustdx.service.app`). No BentoML here, so they are importable and testable alone.

:class:`Prediction` is one image's answer of ``/predict`` (and the prediction part of ``/explain``);
:class:`Explanation` is the answer of ``/explain``: the prediction, its Integrated-Gradients
:class:`AttributionOut` and, with ``attack_eps`` > 0, the :class:`AttackOut` of a PGD-attacked copy;
:class:`ReloadResult` is the answer of ``POST /admin/reload``; :class:`ModelInfo` the answer of
``GET /model``. The models carry no class docstrings on purpose: pydantic would copy them into the
OpenAPI spec, which the field descriptions document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str = Field(description="Predicted class.", examples=["tumor"])
    probabilities: dict[str, float] = Field(
        description="Softmax probability per class.", examples=[{"normal": 0.08, "tumor": 0.92}]
    )
    confidence: float = Field(description="Probability of the predicted class.", examples=[0.92])
    margin: float = Field(description="Top-1 minus top-2 probability.", examples=[0.84])
    refer_to_clinician: bool = Field(description="True when confidence is below the service's threshold.", examples=[False])
    decision: str = Field(description="The label, or 'refer to clinician' below the threshold.", examples=["tumor"])
    model_version: str = Field(
        description="Bundle version (first 12 hex digits of the weights' SHA-256).", examples=["3f9a1c0d2b7e"]
    )
    request_id: str | None = Field(
        None,
        description="Id of this prediction in the inference log: what POST /feedback answers (None from /explain).",
        examples=["5f0c6a1e9b2d4c7a8e3f1b0d2c4a6e8f"],
    )
    image_stored: bool = Field(False, description="The image was kept for review and retraining (store_image=true).")


class FeedbackOut(BaseModel):
    request_id: str
    reviewer: str
    label: str = Field(description="The label the reviewer confirmed.", examples=["tumor"])
    note: str | None = None
    created_at: str = Field(description="When the answer was recorded (ISO 8601, UTC).")
    created: bool = Field(description="False when the same answer had been recorded before (idempotent repeat).")
    agrees_with_prediction: bool = Field(description="The reviewer's label is the model's prediction.")


class FeedbackStats(BaseModel):
    inferences: int = Field(description="Predictions in the inference log.")
    feedback: int = Field(description="Reviewer answers recorded.")
    by_label: dict[str, int] = Field(description="Answers per confirmed label.")
    by_model_version: dict[str, dict[str, Any]] = Field(description="Per model version: answers, agreeing answers, agreement.")
    agreement: float | None = Field(description="Share of answers that confirm the prediction (None before any).")
    pending_review: int = Field(description="Referred predictions with a stored image that nobody has answered yet.")
    oldest_pending_seconds: float | None = Field(description="Age of the oldest of them.")


class AttributionOut(BaseModel):
    target: str = Field(description="The class explained (the prediction).", examples=["tumor"])
    heatmap_png_base64: str = Field(description="Colour-mapped attribution map at model resolution, PNG, base64.")
    attribution: list[list[float]] = Field(description="Channel-summed IG map, average-pooled to map_size x map_size.")
    convergence_delta: float = Field(description="Sum of attributions minus (f(x) - f(baseline)), logit units.", examples=[0.003])
    relative_error: float = Field(description="|delta| / |f(x) - f(baseline)|.", examples=[0.004])
    baseline: str = Field(description="IG baseline used.", examples=["black"])
    method: str = Field(description="IG implementation and rule.", examples=["captum:gausslegendre"])


class AttackOut(BaseModel):
    eps: float = Field(description="L-inf budget in [0, 1] pixel units.", examples=[0.0157])
    steps: int = Field(examples=[10])
    prediction: Prediction
    attribution: AttributionOut
    flipped: bool = Field(description="The attack changed the predicted label.")


class Explanation(BaseModel):
    prediction: Prediction
    attribution: AttributionOut
    attack: AttackOut | None = Field(None, description="Present when attack_eps > 0 (the paper's Fig. 1, live).")


class ReloadResult(BaseModel):
    reloaded: bool = Field(description="False when the pointer already named the serving model.")
    tag: str = Field(examples=["robustdx-classifier:abcd1234efgh5678"])
    version: str
    previous_tag: str


class ModelInfo(BaseModel):
    tag: str = Field(description="BentoML model-store tag being served.", examples=["robustdx-classifier:abcd1234efgh5678"])
    version: str = Field(description="Bundle version (first 12 hex digits of the weights' SHA-256).", examples=["3f9a1c0d2b7e"])
    regime: str = Field(description="Training recipe.", examples=["adv_supcon_ft"])
    stages: list[str | None] = Field(description="Regime of each training stage.", examples=[["adv_supcon", "finetune"]])
    arch: str = Field(examples=["resnet50"])
    image_size: int = Field(description="Side of the model input in pixels (uploads are resized to it).", examples=[96])
    classes: list[str] = Field(examples=[["normal", "tumor"]])
    serving_eps: float = Field(description="L-inf budget the model's robustness was measured at ([0, 1] pixels).")
    dataset: str = Field(examples=["camelyon17"])
    data_card: dict[str, Any] = Field(description="What it was trained on: classes, groups, split sizes per class and group.")
    metrics: dict[str, Any] = Field(description="Validation and test metrics, clean and robust (with intervals).")
    bundle_hash: dict[str, Any] = Field(description="SHA-256 of the weights and of every bundle file.")
    created: str | None = Field(description="When the bundle was written (ISO 8601).")
    loaded_at: str = Field(description="When this replica loaded it (ISO 8601).")
    production_pointer: dict[str, Any] | None = Field(
        description="The production pointer (tag, previous, weights_sha256) and whether this replica serves it."
    )
    pinned_by_env: str | None = Field(description="Tag pinned by ROBUSTDX_MODEL_TAG, if any (the pointer is then ignored).")
    confidence_threshold: float = Field(description="Below it, predictions are marked refer_to_clinician.")
    monitor: dict[str, Any] = Field(description="State of the drift and robustness monitor.")
