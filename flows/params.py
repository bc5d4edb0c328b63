"""The parameters of the Prefect flows as pydantic models, which the Prefect UI shows as forms.

Why their own module: the deployments (:mod:`robustdx.flows.schedule`, ``prefect.yaml``), the command
line and the tests build and validate these parameters without the flows themselves; unknown keys
are refused (``extra="forbid"``), so a typo in a deployment's parameters fails when it is validated.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from robustdx.core.release.gates import GateConfig
from robustdx.flows.release import EvaluationSettings
from robustdx.flows.snapshots import FeedbackSettings


class _Params(BaseModel):
    """Flow parameters: an unknown key is an error."""

    model_config = ConfigDict(extra="forbid")


class TrainParams(_Params):
    """One training run."""

    config: str = Field("configs/demo.yaml", description="RunConfig preset (YAML), relative to the working directory.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, e.g. pretrain.epochs=2.")


class SweepParams(_Params):
    """A Ray Tune sweep (runs on $RAY_ADDRESS when set, else a local Ray)."""

    config: str = Field("configs/sweeps/demo.yaml", description="Sweep file (YAML).")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of the sweep file.")
    run_overrides: list[str] = Field(default_factory=list, description="key=value overrides of every trial's run config.")
    num_samples: int | None = Field(None, ge=1, description="Trials; default: the sweep file's.")
    name: str | None = Field(None, description="Experiment name; an existing one is resumed. Default: the file's.")


BUILD_BENTO = "Build a Bento of the promoted model (bentoml build in the source checkout; robustdx:<model version>)."


class PromoteParams(_Params):
    """Gated promotion of one bundle folder."""

    bundle: str = Field(..., description="Bundle folder written by training (…/bundle).")
    gates: GateConfig = Field(default_factory=GateConfig)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    bentoml_home: str | None = Field(None, description="BentoML home of the model store; default $BENTOML_HOME.")
    service_url: str | None = Field(None, description="Running service to reload after a promotion (needs ROBUSTDX_ADMIN_TOKEN).")
    build_bento: bool = Field(True, description=BUILD_BENTO)


class RetrainParams(_Params):
    """Sweep → train the best configuration in full → evaluate → promote."""

    sweep: SweepParams = Field(default_factory=SweepParams)
    train_overrides: list[str] = Field(
        default_factory=list, description="Overrides for the full training of the best trial, e.g. finetune.epochs=20."
    )
    output_dir: str = Field("runs/retrain", description="Where the retrained run folders go.")
    gates: GateConfig = Field(default_factory=GateConfig)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    bentoml_home: str | None = Field(None, description="BentoML home of the model store; default $BENTOML_HOME.")
    service_url: str | None = Field(None, description="Running service to reload after a promotion.")
    build_bento: bool = Field(True, description=BUILD_BENTO)
    reason: str = Field("manual", description="Why this retrain runs (manual, schedule, drift alert); recorded.")
    feedback: FeedbackSettings = Field(
        default_factory=FeedbackSettings, description="Train on a data snapshot with the clinicians' labels (and wait for them)."
    )
