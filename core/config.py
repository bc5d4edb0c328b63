"""Pydantic configuration for every run, loaded from YAML presets in ``configs/``.

Why: one validated object describes a run completely (data, model, attack, optimisation of each
stage, seed). It is saved beside the results, becomes the Prefect flow parameters and the source of
the Ray Tune search space, so it must reject bad values early with a message that names the field
and the fix.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from robustdx.core.errors import ConfigError
from robustdx.core.registry import suggest


class Regime(StrEnum):
    """One training stage's objective (the paper's strategies)."""

    CE = "ce"
    ADV_CE = "adv_ce"
    SUPCON = "supcon"
    ADV_SUPCON = "adv_supcon"
    FINETUNE = "finetune"


class Recipe(StrEnum):
    """A named sequence of stages: the five models of the paper plus the bare encoders."""

    CE = "ce"
    ADV_CE = "adv_ce"
    ADV_CE_FT = "adv_ce_ft"
    SUPCON = "supcon"
    SUPCON_FT = "supcon_ft"
    ADV_SUPCON = "adv_supcon"
    ADV_SUPCON_FT = "adv_supcon_ft"


class FinetuneMode(StrEnum):
    """How a pre-trained encoder is fine-tuned (SCIENCE.md weakness 4)."""

    FULL = "full"
    LINEAR = "linear"
    ADVERSARIAL = "adversarial"


class AdversarialSchedule(StrEnum):
    """How adversarial regimes mix clean and attacked data within an epoch.

    ``alternate`` is the paper's Alg. 1/2 (a clean pass over the data, then a pass on PGD examples);
    ``adversarial`` is Madry et al.'s (attacked batches only).
    """

    ALTERNATE = "alternate"
    ADVERSARIAL = "adversarial"


class AttackSpace(StrEnum):
    """Where ε is measured: ``pixel`` ([0, 1] images, correct) or ``normalized`` (the paper's bug)."""

    PIXEL = "pixel"
    NORMALIZED = "normalized"


class DatasetName(StrEnum):
    CAMELYON17 = "camelyon17"
    PCAM = "pcam"
    BUSI = "busi"


def _parse_fraction(value: Any) -> Any:
    """Accept ``"8/255"`` as well as ``0.0314`` for pixel-unit budgets."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", value)
        if m:
            den = float(m.group(2))
            if den == 0:
                raise ValueError(f"{value!r} divides by zero")
            return float(m.group(1)) / den
    return value


PixelFloat = Annotated[float, BeforeValidator(_parse_fraction)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)


class DataConfig(_Strict):
    """Which images, at what size, in which subsets."""

    dataset: DatasetName = Field(DatasetName.CAMELYON17, description="Data set family (on-disk layout).")
    root: Path = Field(Path("data/synthetic/camelyon17"), description="Folder holding the data set.")
    image_size: int = Field(96, ge=8, le=1024, description="Side of the square model input in pixels.")
    n_train: int | None = Field(None, ge=2, description="Label-balanced training subset size (None: all).")
    n_val: int | None = Field(None, ge=2, description="Label-balanced validation subset size (None: all).")
    n_test: int | None = Field(None, ge=2, description="Label-balanced test subset size (None: all).")
    split_seed: int = Field(0, ge=0, description="Seed of subsets and splits; fixed across training seeds.")
    val_split: Literal["val", "id_val"] = Field(
        "val", description="Camelyon17 validation split: OOD hospital 1 (WILDS default) or in-distribution."
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="PCam/BUSI: fraction held out for validation.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="BUSI: fraction held out for testing.")
    batch_size: int = Field(64, ge=2, le=4096, description="Images per batch (SupCon needs >= 2).")
    eval_batch_size: int = Field(128, ge=1, le=8192, description="Images per batch in evaluation.")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")
    augment: bool = Field(True, description="Flips, colour jitter and greyscale on training images.")


class ModelConfig(_Strict):
    """Encoder and heads."""

    arch: str = Field("resnet50", description="Encoder name, see robustdx.core.models.list_models().")
    weights: Path | None = Field(None, description="Local state-dict file (safetensors) for the encoder.")
    num_classes: int = Field(2, ge=2, description="Number of output classes.")
    proj_dim: int = Field(128, ge=2, description="SupCon projection dimension.")
    head_hidden: int = Field(256, ge=2, description="Hidden units of the 1-layer MLP classifier head.")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout of the classifier head.")

    @model_validator(mode="after")
    def _known_arch(self) -> ModelConfig:
        from robustdx.core.models import list_models

        names = list_models()
        if self.arch not in names:
            raise ValueError(f"unknown arch {self.arch!r}.{suggest(self.arch, names)} Valid: {', '.join(names)}")
        return self


class AttackConfig(_Strict):
    """An L∞ attack. ε and the step are in [0, 1] pixel units unless ``space='normalized'``."""

    name: Literal["pgd", "fgsm_rs"] = Field("pgd", description="Attack: PGD-L∞ or FGSM with random start.")
    eps: PixelFloat = Field(4 / 255, ge=0, description="L∞ budget, e.g. 4/255 (strings like '4/255' allowed).")
    steps: int = Field(5, ge=1, le=1000, description="Gradient steps per restart.")
    step_size: PixelFloat | None = Field(None, gt=0, description="Step; None gives 2.5·ε/steps (Madry et al.).")
    restarts: int = Field(1, ge=1, le=100, description="Random restarts; the worst case per image is kept.")
    random_start: bool = Field(True, description="Start from a uniform point in the ε-ball.")
    space: AttackSpace = Field(AttackSpace.PIXEL, description="'pixel' (correct) or 'normalized' (paper).")
    clamp: bool = Field(True, description="Keep attacked images inside [0, 1].")

    @model_validator(mode="before")
    @classmethod
    def _fgsm_is_one_step(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") == "fgsm_rs":
            if data.get("steps", 1) != 1:
                raise ValueError(f"fgsm_rs takes exactly one step (got steps={data['steps']}); use name=pgd for more")
            data = {**data, "steps": 1}
        return data

    @model_validator(mode="after")
    def _eps_scale(self) -> AttackConfig:
        if self.space == AttackSpace.PIXEL and self.eps > 1:
            raise ValueError(f"got eps={self.eps:g} but inputs are in [0, 1]: did you mean {self.eps:g}/255?")
        return self

    @property
    def alpha(self) -> float:
        """The step actually used."""
        if self.step_size is not None:
            return float(self.step_size)
        if self.name == "fgsm_rs":
            return 1.25 * self.eps  # Wong et al. 2020
        return 2.5 * self.eps / self.steps

    @classmethod
    def paper(cls) -> AttackConfig:
        """The authors' settings, for comparison only: ε=0.2, step 0.01 in ImageNet-normalised
        space, no random start, no clamp to the valid pixel range (SCIENCE.md weakness 1)."""
        return cls(name="pgd", eps=0.2, steps=10, step_size=0.01, random_start=False, space=AttackSpace.NORMALIZED, clamp=False)


class StageConfig(_Strict):
    """Optimisation of one training stage."""

    epochs: int = Field(20, ge=1, le=1000, description="Epochs of this stage.")
    lr: float = Field(3e-4, gt=0, lt=1, description="Learning rate.")
    optimizer: Literal["adam", "adamw"] = Field("adamw", description="Adam or AdamW.")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="Weight decay (decoupled for AdamW).")
    gamma: float = Field(0.85, gt=0, le=1, description="ExponentialLR decay per epoch.")
    temperature: float = Field(0.1, gt=0, le=10, description="SupCon temperature τ.")
    schedule: AdversarialSchedule = Field(
        AdversarialSchedule.ALTERNATE, description="Adversarial regimes: paper's clean+adversarial passes, or adversarial only."
    )
    finetune_mode: FinetuneMode = Field(FinetuneMode.FULL, description="Fine-tuning: full, linear probe or adversarial.")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap on batches per pass (tests, demos).")


class RunConfig(_Strict):
    """A complete training run: a recipe of stages on one data set with one seed."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name (folder under output_dir).")
    seed: int = Field(0, ge=0, description="Training seed (initialisation, shuffling, augmentation, attacks).")
    recipe: Recipe = Field(Recipe.ADV_SUPCON_FT, description="Which of the paper's models to train.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig, description="Attack used in training.")
    eval_attack: AttackConfig = Field(
        default_factory=lambda: AttackConfig(steps=20, restarts=1),
        description="Attack used to measure robust accuracy on the test split.",
    )
    pretrain: StageConfig = Field(default_factory=StageConfig, description="First stage (CE or SupCon).")
    finetune: StageConfig = Field(default_factory=lambda: StageConfig(lr=1e-3), description="Fine-tuning stage of *_ft recipes.")
    output_dir: Path = Field(Path("runs"), description="Where run folders are written.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")
    progress: bool = Field(True, description="Show progress bars.")
    channels_last: bool = Field(True, description="channels_last memory format (faster convolutions on CPU and GPU).")
    n_reference: int = Field(512, ge=16, description="Training embeddings kept in the bundle for drift.")
    val_robust_n: int = Field(
        0,
        ge=0,
        description="Validation images attacked with eval_attack after every classifier epoch (val_robust_acc); 0 = off.",
    )
    monitor: Literal["acc", "robust_mean"] = Field(
        "acc",
        description="Checkpoint selection of classifier stages: val accuracy, or the mean of clean and robust val "
        "accuracy (needs val_robust_n > 0; guards against robust overfitting, Rice et al. 2020).",
    )

    @model_validator(mode="after")
    def _monitor_needs_robust_val(self) -> RunConfig:
        if self.monitor == "robust_mean" and self.val_robust_n == 0:
            raise ValueError("monitor=robust_mean needs val_robust_n > 0 (validation images to attack each epoch)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


PAPER_RECIPES = (Recipe.CE, Recipe.ADV_CE, Recipe.ADV_CE_FT, Recipe.SUPCON_FT, Recipe.ADV_SUPCON_FT)


class AttributionSettings(_Strict):
    """How attributions are computed and scored in an experiment."""

    n_images: int = Field(16, ge=1, le=4096, description="Test images explained per cell (clean and attacked).")
    baseline: Literal["black", "blur", "noise"] = Field(
        "blur",
        description="Integrated-Gradients baseline. Blur by default: on H&E a black baseline resembles the dark "
        "nuclei that carry the label, so IG then credits the bright background (measured: deletion AUC 0.90 vs 0.48).",
    )
    tol: float = Field(0.01, gt=0, lt=1, description="Completeness tolerance of IG (relative error per image).")
    n_sanity: int = Field(4, ge=0, le=256, description="Images for the model-randomisation sanity check (0: skip).")
    n_infidelity: int = Field(4, ge=0, le=256, description="Images for captum infidelity / sensitivity (0: skip).")
    n_grid: int = Field(3, ge=1, le=16, description="Images in the clean-vs-attacked IG grid (the paper's Fig. 1).")


class ExperimentConfig(_Strict):
    """A paper table: every recipe x seed of one base run config, scored clean, robust and for attributions."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Report folder name under output_dir.")
    base: Path = Field(..., description="RunConfig preset (YAML), relative to this file or the working directory.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to the base config.")
    recipes: list[Recipe] = Field(default_factory=lambda: list(PAPER_RECIPES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="Training seeds per recipe.")
    eps_grid: list[PixelFloat] = Field(
        default_factory=lambda: [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], min_length=1, description="Pixel-unit ε grid."
    )
    pgd_steps: int = Field(50, ge=1, le=1000, description="PGD steps of the robustness curve.")
    pgd_restarts: int = Field(2, ge=1, le=100, description="PGD random restarts of the robustness curve.")
    n_robust: int = Field(128, ge=1, description="Test images attacked per ε.")
    n_square: int = Field(64, ge=0, description="Test images for the gradient-free Square attack (0: skip).")
    square_queries: int = Field(500, ge=1, description="Query budget of the Square attack per image.")
    n_boot: int = Field(1000, ge=100, description="Bootstrap resamples for 95% confidence intervals.")
    attribution: AttributionSettings = Field(default_factory=AttributionSettings)
    output_dir: Path = Field(Path("reports"), description="Where the report folder is written.")

    @model_validator(mode="after")
    def _eps_in_pixels(self) -> ExperimentConfig:
        bad = [e for e in self.eps_grid if not 0 <= e <= 1]
        if bad:
            raise ValueError(f"eps_grid values must be pixel units in [0, 1], got {bad}: did you mean {bad[0]:g}/255?")
        return self


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentConfig, RunConfig]:
    """Load an experiment file and the base run config it names (resolved next to the file first)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    raw = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    try:
        exp = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, ExperimentConfig, "experiment configuration")) from None
    base = exp.base if exp.base.is_absolute() or not (path.parent / exp.base).is_file() else path.parent / exp.base
    return exp, load_config(base, exp.overrides)


def _section(model: type[BaseModel], path: Sequence[str]) -> type[BaseModel]:
    """The pydantic model at ``path`` below ``model`` (unwrapping ``X | None``)."""
    for part in path:
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        candidates = [field.annotation, *get_args(field.annotation)]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return model
        model = nested[0]
    return model


def format_errors(err: ValidationError, model: type[BaseModel], what: str = "configuration") -> str:
    """One line per problem, naming the key; an unknown key gets the valid keys of *its* section and the
    nearest spelling. Shared by every YAML-backed config (runs, experiments, sweeps)."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            valid = list(_section(model, loc[:-1]).model_fields)
            msg = f"unknown key.{suggest(loc[-1], valid)} Valid: {', '.join(valid)}"
        elif "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {'.'.join(loc) or '<root>'}: {msg}")
    return f"invalid {what}:\n" + "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. pretrain.epochs=2)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def parse_config(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw mapping (plus overrides) into a :class:`RunConfig`; raise :class:`ConfigError`."""
    raw = apply_overrides(copy.deepcopy(raw), overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, RunConfig)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML preset, apply overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return parse_config(raw, overrides)


def dump_config(cfg: RunConfig) -> str:
    """YAML text of a config, reloadable by :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
