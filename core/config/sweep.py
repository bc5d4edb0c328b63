"""The sweep configuration: a base run config, a search space over the training attack (ε, PGD steps), the
learning rate and the SupCon temperature, and how to search it (``configs/sweeps/*.yaml``).

Pure schema: the Ray Tune domains, trials and the driver live in :mod:`robustdx.flows.tune`. The serving ε
(``eval_attack``) is never a dimension: trials are scored on the same threat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from robustdx.core.config.base import PixelBudget, Strict, validate

Eps = PixelBudget
Steps = Annotated[int, Field(ge=1, le=1000)]
LearningRate = Annotated[float, Field(gt=0, lt=1)]
Temperature = Annotated[float, Field(gt=0, le=10)]


class Dimension(Strict):
    """One searched hyper-parameter: ``choices`` (a list, or ``{choices: [...]}``) or a ``{low, high}`` range.

    Subclasses fix the value type and bounds and how a range is sampled (``range_kind``: ``uniform``,
    ``loguniform`` or ``randint`` — an integer range includes ``high``).
    """

    range_kind: ClassVar[str] = "uniform"
    choices: list[Any] | None = None
    low: Any | None = None
    high: Any | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            return {"choices": list(data)}
        if data is not None and not isinstance(data, dict):
            raise ValueError(
                f"got the single value {data!r}: give a list of choices, e.g. [{data!r}, ...], or a range "
                "{low: ..., high: ...}; to fix a value for every trial use `overrides` instead"
            )
        return data

    @model_validator(mode="after")
    def _one_form(self) -> Dimension:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None and ranged:
            raise ValueError("give either choices or low/high, not both")
        if self.choices is None and not ranged:
            raise ValueError("give choices: [...] or a range low: ..., high: ...")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must not be empty")
        if ranged and (self.low is None or self.high is None):
            raise ValueError(f"a range needs both low and high (got low={self.low}, high={self.high})")
        if ranged and not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low:g}, high={self.high:g}); for one value use choices")
        return self

    def extremes(self) -> list[Any]:
        """The smallest and largest values the dimension can take (checked against the base config up front)."""
        values = self.choices if self.choices is not None else [self.low, self.high]
        return sorted({min(values), max(values)})

    def describe(self) -> str:
        if self.choices is not None:
            return f"choice of {self.choices}"
        return f"{self.range_kind}[{self.low:g}, {self.high:g}]"


class EpsSpace(Dimension):
    """Training-attack ε in [0, 1] pixel units ("4/255" strings allowed); a range is sampled uniformly."""

    choices: list[Eps] | None = None
    low: Eps | None = None
    high: Eps | None = None


class StepsSpace(Dimension):
    """PGD steps of the training attack; a range samples integers uniformly, ``high`` included."""

    range_kind: ClassVar[str] = "randint"
    choices: list[Steps] | None = None
    low: Steps | None = None
    high: Steps | None = None


class LrSpace(Dimension):
    """Learning rate of the first stage; a range is sampled log-uniformly.

    ``finetune_lr_scale``: the fine-tuning stage of ``*_ft`` recipes gets ``lr × finetune_lr_scale``
    (1 = the same rate); ``null`` leaves the base config's fine-tuning rate alone.
    """

    range_kind: ClassVar[str] = "loguniform"
    choices: list[LearningRate] | None = None
    low: LearningRate | None = None
    high: LearningRate | None = None
    finetune_lr_scale: float | None = Field(1.0, gt=0, description="finetune.lr = lr x this; null: keep the base's.")


class TemperatureSpace(Dimension):
    """SupCon temperature τ of the pretraining stage (SupCon recipes only); a range is sampled uniformly."""

    choices: list[Temperature] | None = None
    low: Temperature | None = None
    high: Temperature | None = None


class SpaceConfig(Strict):
    """The search space. A dimension left out keeps the base config's value in every trial.

    When ``eps`` or ``steps`` is searched, the training attack's ``step_size`` is reset to its
    default 2.5·ε/steps (Madry et al.) so the step follows the sampled budget.
    """

    eps: EpsSpace | None = Field(None, description="Training-attack ε (pixel units); the serving ε (eval_attack) stays fixed.")
    steps: StepsSpace | None = Field(None, description="PGD steps of the training attack.")
    lr: LrSpace | None = Field(None, description="Pretraining learning rate (and fine-tuning, scaled).")
    temperature: TemperatureSpace | None = Field(None, description="SupCon temperature of the pretraining stage.")

    @model_validator(mode="after")
    def _not_empty(self) -> SpaceConfig:
        if not self.dimensions():
            raise ValueError(f"the search space is empty: give at least one of {', '.join(type(self).model_fields)}")
        return self

    def dimensions(self) -> dict[str, Dimension]:
        """Searched dimensions by name, in a fixed order."""
        return {name: dim for name in type(self).model_fields if (dim := getattr(self, name)) is not None}


class Objective(StrEnum):
    """What a trial is scored on (maximised); every option reads validation metrics only."""

    ROBUST_MEAN = "robust_mean"  # val_score = (val_acc + val_robust_acc) / 2
    CLEAN = "clean"  # val_acc
    ROBUST = "robust"  # val_robust_acc (PGD at the serving ε on val_robust_n images)

    @property
    def metric(self) -> str:
        """The epoch metric of :class:`robustdx.core.training.trainer.Trainer` this objective reads."""
        return {"robust_mean": "val_score", "clean": "val_acc", "robust": "val_robust_acc"}[self.value]

    @property
    def monitor(self) -> Literal["acc", "robust_mean"]:
        """The run config's checkpoint selection that agrees with the objective (no robust-only monitor exists)."""
        return "acc" if self is Objective.CLEAN else "robust_mean"


class AshaConfig(Strict):
    """Asynchronous successive halving on final-stage epochs (``time_attr = training_iteration``)."""

    grace_period: int = Field(1, ge=1, description="Final-stage epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(2, gt=1, description="Keep the top 1/reduction_factor at each rung.")


class Resources(Strict):
    """Resources of one trial."""

    cpu: float = Field(1, gt=0, description="CPUs per trial.")
    gpu: float | None = Field(
        None, ge=0, description="GPUs per trial; null: 1 when this machine has CUDA, else 0 (set it on a cluster)."
    )


class SweepConfig(Strict):
    """A Ray Tune sweep: a base run config, a search space, and how to search it."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$", description="Sweep folder under storage_path.")
    base: Path = Field(..., description="RunConfig preset (YAML), relative to the sweep file or the working directory.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to the base config.")
    space: SpaceConfig
    num_samples: int = Field(8, ge=1, le=100_000, description="Trials to run.")
    search: Literal["optuna", "random"] = Field(
        "optuna", description="Optuna TPE (seeded) or random sampling (seeded; identical trials for any scheduler)."
    )
    scheduler: Literal["asha", "fifo"] = Field("asha", description="ASHA early stopping, or run every trial to the end.")
    asha: AshaConfig = Field(default_factory=AshaConfig)
    objective: Objective = Field(Objective.ROBUST_MEAN, description="robust_mean (default), clean or robust; see Objective.")
    val_robust_n: int = Field(64, ge=0, description="Validation images attacked at the serving ε after every epoch.")
    max_concurrent: int | None = Field(None, ge=1, description="Trials running at once (null: as resources allow).")
    resources_per_trial: Resources = Field(default_factory=Resources)
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (null: all); ignored on a cluster.")
    max_failures: int = Field(0, ge=0, description="Retries of a failed trial (from its last checkpoint).")
    storage_path: Path = Field(Path("runs/sweeps"), description="Folder of sweep folders, shared by driver and workers.")
    seed: int = Field(0, ge=0, description="Seed of the search algorithm (trials all train with the base config's seed).")

    @model_validator(mode="after")
    def _objective_needs_robust_val(self) -> SweepConfig:
        if self.objective is not Objective.CLEAN and self.val_robust_n == 0:
            raise ValueError(f"objective={self.objective.value} needs val_robust_n > 0 (validation images to attack)")
        return self

    @property
    def experiment_dir(self) -> Path:
        """Ray's experiment folder, which also holds this module's outputs."""
        return (self.storage_path / self.name).resolve()


def parse_sweep(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> SweepConfig:
    """Validate a raw sweep mapping (plus ``key=value`` overrides); raise :class:`ConfigError` naming each bad key."""
    return validate(SweepConfig, raw, list(overrides), "sweep configuration")
