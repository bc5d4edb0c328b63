"""The feedback-study configuration: a stain shift, how many shifted images clinicians label, and how model B
trains on them (``configs/experiments/feedback-*.yaml``, run by ``robustdx feedback-study``; see
:mod:`robustdx.core.evaluation.feedback_study`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from robustdx.core.config.base import Strict, load_yaml, resolve_beside, validate
from robustdx.core.config.run import RunConfig, load_config


class StainShift(Strict):
    """A colour change ``x -> clip(x * tint + brightness, 0, 1)`` per RGB channel, in [0, 1] pixel units."""

    tint: tuple[float, float, float] = Field((0.75, 0.6, 0.95), description="Per-channel gain (R, G, B).")
    brightness: float = Field(0.08, ge=-0.5, le=0.5, description="Added to every channel after the gain.")


class FeedbackStudyConfig(Strict):
    """Model A on the base data; a stain-shifted production stream labelled by reviewers; model B from the snapshot."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Report folder name under output_dir.")
    base: Path = Field(..., description="RunConfig preset (YAML) of A and B, relative to this file or the working directory.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to the base config.")
    shift: StainShift = Field(default_factory=StainShift)
    n_feedback: int = Field(
        400, ge=8, description="Test images sent as the production stream and labelled; the rest of the test split is held out."
    )
    recent_share: float = Field(0.25, ge=0, lt=1, description="Share of the feedback the snapshot holds out as recent.")
    feedback_repeat: int = Field(1, ge=1, le=100, description="Times each feedback image is seen per epoch by B.")
    n_robust: int = Field(200, ge=1, description="Held-out items attacked (a seeded subsample, the same for A and B).")
    seed: int = Field(0, ge=0, description="Seed of the stream / held-out split, the attacked subsample and the bootstrap.")
    n_boot: int = Field(2000, ge=100, description="Bootstrap resamples of the paired differences' intervals.")
    output_dir: Path = Field(Path("reports"), description="Where the report folder is written.")
    runs_dir: Path | None = Field(
        None,
        description="Where A and B train (default: the report folder's runs/). Studies of one base config that share it "
        "share model A; each trains its own B (named B-<name>).",
    )

    @property
    def b_name(self) -> str:
        """B's run name: ``B`` in the study's own runs folder, ``B-<name>`` in a shared one."""
        return "B" if self.runs_dir is None else f"B-{self.name}"


def load_feedback_study(path: str | Path, overrides: list[str] | None = None) -> tuple[FeedbackStudyConfig, RunConfig]:
    """Load a feedback-study file and the base run config it names (resolved next to the file first)."""
    path = Path(path)
    study = validate(FeedbackStudyConfig, load_yaml(path, "feedback-study file"), overrides or [], "feedback-study configuration")
    return study, load_config(resolve_beside(study.base, path), study.overrides)
