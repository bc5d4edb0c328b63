"""Promotion gates: a candidate replaces the serving model only if it is not worse — clean, robust
*and* in where its attributions point.

Why three gates: a model can trade robustness for clean accuracy (or the reverse) and still look
better on one headline number; a clinician-facing model must also keep explaining itself on the
lesion/tumour region rather than drifting to artefacts. A candidate trained on a data snapshot is also
compared on the snapshot's held-out *recent* images (clinician-labelled production images): the base gates
reject a model that forgets the old distribution, the recent gate one that does not serve the new one, and
neither rejects a model for adapting (it is compared with the serving model on the same recent images).
Each gate allows a small tolerance because
validation scores of two equally good models differ by sampling noise (on n images the standard
error of an accuracy near 0.85 is about 0.36/√n: 0.016 at n = 512). The decision is pure: both
score dictionaries come from :func:`robustdx.core.evaluation.scoring.validation_scores` run on the same split,
the same images and the same attack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class GateConfig(BaseModel):
    """How much worse than the serving model a candidate may be on each validation score."""

    model_config = ConfigDict(extra="forbid")

    clean_tolerance: float = Field(0.01, ge=0, le=1, description="Allowed drop in clean validation accuracy.")
    robust_tolerance: float = Field(0.01, ge=0, le=1, description="Allowed drop in PGD validation accuracy at the serving ε.")
    attribution_tolerance: float = Field(
        0.02, ge=0, le=1, description="Allowed drop in the share of IG mass inside the label region."
    )
    recent_tolerance: float = Field(
        0.02, ge=0, le=1, description="Allowed drop in clean accuracy on the snapshot's held-out recent images."
    )
    class_recall_tolerance: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Allowed drop in each class's validation recall (None: not gated). Overall accuracy can hide a "
        "trade: reports/feedback-pcam-strong's B kept base accuracy and lost 0.19 of tumour recall.",
    )
    min_clean_acc: float = Field(0.0, ge=0, le=1, description="Absolute floor on clean accuracy (also for the first model).")
    min_robust_acc: float = Field(0.0, ge=0, le=1, description="Absolute floor on robust accuracy (also for the first model).")


@dataclass(frozen=True)
class Check:
    """One gate: the candidate's value, the serving model's, the threshold and whether it passed."""

    name: str
    candidate: float | None
    production: float | None
    threshold: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]

    @property
    def summary(self) -> str:
        if self.promote:
            return "promoted: " + "; ".join(c.reason for c in self.checks)
        return "rejected: " + "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "summary": self.summary, "checks": [asdict(c) for c in self.checks]}


def _relative_gate(name: str, cand: float | None, prod: float | None, tolerance: float) -> Check:
    if prod is None:
        return Check(name, cand, prod, None, True, f"{name}: no serving value to compare with")
    if cand is None:
        return Check(name, cand, prod, prod - tolerance, False, f"{name}: candidate has no value, serving model has {prod:.4f}")
    threshold = prod - tolerance
    ok = cand >= threshold
    reason = f"{name} {cand:.4f} {'>=' if ok else '<'} {threshold:.4f} (serving {prod:.4f} - {tolerance:g})"
    return Check(name, cand, prod, threshold, ok, reason)


def _floor_gate(name: str, cand: float | None, floor: float) -> Check:
    ok = cand is not None and cand >= floor
    shown = "none" if cand is None else f"{cand:.4f}"
    return Check(f"{name}_floor", cand, None, floor, ok, f"{name} {shown} {'>=' if ok else '<'} floor {floor:g}")


def decide(candidate: dict[str, Any], production: dict[str, Any] | None, gates: GateConfig) -> Decision:
    """Promote when every gate passes. With no serving model only the absolute floors apply."""
    checks = [
        _floor_gate("clean_acc", candidate.get("clean_acc"), gates.min_clean_acc),
        _floor_gate("robust_acc", candidate.get("robust_acc"), gates.min_robust_acc),
    ]
    if production is not None:
        if candidate.get("eps") != production.get("eps"):
            raise ValueError(
                f"scores measured at different ε (candidate {candidate.get('eps')}, serving {production.get('eps')}): "
                "score both models with the same attack"
            )
        checks += [
            _relative_gate("clean_acc", candidate.get("clean_acc"), production.get("clean_acc"), gates.clean_tolerance),
            _relative_gate("robust_acc", candidate.get("robust_acc"), production.get("robust_acc"), gates.robust_tolerance),
            _relative_gate(
                "attribution", candidate.get("attribution"), production.get("attribution"), gates.attribution_tolerance
            ),
        ]
        if gates.class_recall_tolerance is not None:  # per class: a trade between classes is not hidden by the mean
            prod_recall = production.get("class_recall") or {}
            for name, value in sorted((candidate.get("class_recall") or {}).items()):
                checks.append(_relative_gate(f"recall[{name}]", value, prod_recall.get(name), gates.class_recall_tolerance))
        if candidate.get("recent_clean_acc") is not None:  # scored on a snapshot: the recent images gate too
            checks.append(
                _relative_gate(
                    "recent_clean_acc", candidate["recent_clean_acc"], production.get("recent_clean_acc"),
                    gates.recent_tolerance,
                )  # fmt: skip
            )
    return Decision(all(c.passed for c in checks), checks)
