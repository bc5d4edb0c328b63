"""The run configuration: one validated object that describes a training run completely (data, model,
attack, optimisation of each stage, seed), loaded from YAML presets in ``configs/``.

Why: it is saved beside the results, becomes the Prefect flow parameters and the base of every Ray Tune
trial, so it must reject bad values early with a message that names the field and the fix.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from robustdx.core.config.base import PixelFloat, Strict, load_yaml, pixel_budget_error, validate
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


class DataConfig(Strict):
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
    cv_folds: int | None = Field(
        None,
        ge=2,
        le=100,
        description="PCam/BUSI: k-fold cross-validation over the labelled pool (BUSI: all images; PCam: train/), "
        "stratified and seeded by split_seed; None keeps the fixed hold-out split.",
    )
    cv_fold: int = Field(0, ge=0, description="Which of the cv_folds folds is the test split (0 .. cv_folds-1).")
    snapshot: Path | None = Field(
        None,
        description="A data snapshot (runs/snapshots/ID, from `robustdx data snapshot`): train on the base data set, "
        "checked against the snapshot's hashes, plus the clinician-labelled images it froze; its held-out recent "
        "share is the 'recent' validation set of promotion.",
    )
    feedback_repeat: int = Field(
        1, ge=1, le=100, description="With a snapshot: how often each clinician-labelled image appears per training "
        "epoch (they are few beside the base set, and they are the images of the shift).",
    )

    @model_validator(mode="after")
    def _cross_validation(self) -> DataConfig:
        if self.cv_folds is None:
            if self.cv_fold != 0:
                raise ValueError(f"cv_fold={self.cv_fold} needs cv_folds (the number of folds, e.g. cv_folds=5)")
            return self
        if self.cv_fold >= self.cv_folds:
            raise ValueError(f"cv_fold={self.cv_fold} is out of range for cv_folds={self.cv_folds}: use 0 .. {self.cv_folds - 1}")
        if self.dataset == DatasetName.CAMELYON17:
            raise ValueError(
                "cv_folds is for pcam and busi; camelyon17 splits by hospital (the shift under test), leave cv_folds unset"
            )
        if self.n_test is not None:
            raise ValueError(
                f"n_test={self.n_test} would subsample the test fold, so not every image would be tested once; "
                "leave n_test unset with cv_folds"
            )
        return self


class ModelConfig(Strict):
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


class AttackConfig(Strict):
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
            raise ValueError(pixel_budget_error(self.eps))
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


class StageConfig(Strict):
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
    class_weights: Literal["none", "balanced"] = Field(
        "none",
        description="Classifier stages: weight the training cross-entropy by inverse class frequency of the training "
        "split, n / (k * n_c) ('balanced'; for imbalanced sets such as BUSI) or not at all ('none'). The attack's loss "
        "stays unweighted.",
    )


class RunConfig(Strict):
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
    monitor: Literal["acc", "robust_mean", "bal_acc", "auc"] = Field(
        "acc",
        description="Checkpoint selection of classifier stages: val accuracy, the mean of clean and robust val "
        "accuracy (needs val_robust_n > 0; guards against robust overfitting, Rice et al. 2020), val balanced "
        "accuracy or val ROC-AUC (imbalanced sets such as BUSI, where accuracy rewards the majority class). "
        "SupCon stages always select on nearest-centroid accuracy.",
    )

    @model_validator(mode="after")
    def _monitor_needs_robust_val(self) -> RunConfig:
        if self.monitor == "robust_mean" and self.val_robust_n == 0:
            raise ValueError("monitor=robust_mean needs val_robust_n > 0 (validation images to attack each epoch)")
        return self

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def parse_config(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw mapping (plus overrides) into a :class:`RunConfig`; raise :class:`ConfigError`."""
    return validate(RunConfig, raw, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML preset, apply overrides, validate."""
    return parse_config(load_yaml(path), overrides)


def dump_config(cfg: RunConfig) -> str:
    """YAML text of a config, reloadable by :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
