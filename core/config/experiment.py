"""The experiment configuration: a paper table — every recipe x seed (x cross-validation fold) of one base run
config, trained on equal budgets and scored clean, robust and for attributions (``configs/experiments/*.yaml``,
run by ``robustdx experiment``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from robustdx.core.config.base import PixelBudget, Strict, load_yaml, resolve_beside, validate
from robustdx.core.config.run import Recipe, RunConfig, load_config

PAPER_RECIPES = (Recipe.CE, Recipe.ADV_CE, Recipe.ADV_CE_FT, Recipe.SUPCON_FT, Recipe.ADV_SUPCON_FT)


class SuiteConfig(Strict):
    """Which items are attacked at which budgets, and how hard (see :mod:`robustdx.core.evaluation.suite`)."""

    headline_eps: tuple[PixelBudget, ...] | None = Field(
        None, description="Budgets attacked on every evaluation item; None: the training ε and twice it."
    )
    grid_eps: tuple[PixelBudget, ...] = Field((1 / 255, 2 / 255, 4 / 255, 8 / 255), description="The rest of the ε grid.")
    sanity_eps: tuple[PixelBudget, ...] = Field(
        (16 / 255, 64 / 255),
        description="Budgets far beyond the training ε that a model is not expected to survive: accuracy there should be ≈ 0.",
    )
    sanity_max_acc: float = Field(0.05, ge=0, le=1, description="Robust accuracy above this at a sanity budget flags the cell.")
    n_items: int | None = Field(None, ge=1, description="Evaluation items (a seeded permutation of the test split); None: all.")
    n_grid: int = Field(300, ge=1, description="Items of the ε grid and the sanity points: the first of the evaluation items.")
    n_square: int = Field(200, ge=0, description="Items Square attacks at the training ε: the first of the evaluation items.")
    square_sanity: bool = Field(
        True,
        description="Square also on what the gradient attacks leave standing at the sanity budgets (few items): says "
        "whether a sanity flag is the gradient attacks failing or items no attack breaks.",
    )
    square_queries: int = Field(1000, ge=1, description="Queries per item of the Square attack.")
    square_p_init: float = Field(0.8, gt=0, le=1, description="Initial fraction of pixels a Square window covers.")
    square_tol: float = Field(
        0.01, ge=0, le=1, description="Share of the Square items Square may break beyond the gradient attacks before flagging."
    )
    pgd_steps: int = Field(50, ge=1, le=10_000, description="PGD steps per restart (step 2.5·ε/steps, random start).")
    pgd_restarts: int = Field(2, ge=1, le=100, description="PGD random restarts.")
    apgd_steps: int = Field(100, ge=0, le=10_000, description="APGD steps (0: no APGD).")
    apgd_loss: Literal["ce", "margin"] = Field("ce", description="APGD's loss: cross-entropy (APGD-CE) or the logit margin.")
    monotone_tol: float = Field(0.01, ge=0, le=1, description="Rise of robust accuracy with ε tolerated before flagging.")
    batch_size: int = Field(128, ge=1, description="Items per attacked batch.")
    seed: int = Field(0, ge=0, description="Seed of the attacks' random starts.")

    def budgets(self, train_eps: float) -> list[tuple[float, str]]:
        """Every budget with its role (headline / grid / sanity), headline first, each ε once."""
        headline = self.headline_eps if self.headline_eps is not None else (train_eps, min(1.0, 2 * train_eps))
        out: list[tuple[float, str]] = []
        for role, values in (("headline", headline), ("grid", self.grid_eps), ("sanity", self.sanity_eps)):
            for eps in values:
                if eps > 0 and all(not np.isclose(eps, e) for e, _ in out):
                    out.append((float(eps), role))
        return out


class Budget(Strict):
    """Equal optimisation budgets: every regime takes the same number of optimiser steps.

    Why: the paper's regimes trained for different lengths (CE 2 epochs, the *_ft recipes 2 + 2), so
    differences could be training length. One unit is a pass over the training split; an adversarial stage on
    the paper's schedule makes two passes per epoch (clean, then attacked), so it gets half the epochs.
    """

    passes: int = Field(8, ge=1, le=10_000, description="Optimiser passes over the training split every regime gets.")
    pretrain_share: float = Field(0.5, gt=0, lt=1, description="Share of a two-stage recipe's passes given to pre-training.")


class AttributionSettings(Strict):
    """How attributions are computed and scored in an experiment."""

    n_images: int | None = Field(
        200, ge=1, description="Evaluation items explained (the first of them that have a label region); None: all of them."
    )
    baseline: Literal["black", "blur", "noise"] = Field(
        "blur",
        description="Integrated-Gradients baseline. Blur by default: on H&E a black baseline resembles the dark "
        "nuclei that carry the label, so IG then credits the bright background.",
    )
    n_steps: int = Field(
        64, ge=16, le=1024, description="Gauss-Legendre points of the IG rule (fixed: the map error is bounded, not the sum's)."
    )
    tol: float = Field(0.01, gt=0, lt=1, description="Completeness error reported as 'converged' (IG's rule is fixed).")
    n_sanity: int = Field(32, ge=0, le=4096, description="Images of the cascading model-randomisation check (0: skip).")
    n_infidelity: int = Field(32, ge=0, le=4096, description="Images of infidelity / max-sensitivity (0: skip).")
    n_grid: int = Field(3, ge=1, le=16, description="Images in the clean-vs-attacked IG grid (the paper's Fig. 1).")


class ExperimentConfig(Strict):
    """A paper table: every recipe x seed (x fold) of one base run config, scored clean, robust and for attributions."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Report folder name under output_dir.")
    base: Path = Field(..., description="RunConfig preset (YAML), relative to this file or the working directory.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to the base config.")
    recipes: list[Recipe] = Field(default_factory=lambda: list(PAPER_RECIPES), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="Training seeds per recipe.")
    folds: int | None = Field(
        None, ge=2, le=20, description="Stratified cross-validation folds (every image tested once); None: the fixed test split."
    )
    budget: Budget | None = Field(None, description="Equal optimisation budgets; None: the base config's epochs as given.")
    robustness: SuiteConfig = Field(default_factory=SuiteConfig)
    attribution: AttributionSettings = Field(default_factory=AttributionSettings)
    n_boot: int = Field(2000, ge=100, description="Bootstrap resamples of the balanced-accuracy and AUC intervals.")
    output_dir: Path = Field(Path("reports"), description="Where the report folder is written.")

    @model_validator(mode="after")
    def _classifiers_only(self) -> ExperimentConfig:
        headless = [str(r) for r in self.recipes if r in (Recipe.SUPCON, Recipe.ADV_SUPCON)]
        if headless:
            raise ValueError(f"recipes {headless} train encoders without a classifier; experiments score classifiers (use *_ft)")
        return self


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentConfig, RunConfig]:
    """Load an experiment file and the base run config it names (resolved next to the file first)."""
    path = Path(path)
    exp = validate(ExperimentConfig, load_yaml(path, "experiment file"), overrides or [], "experiment configuration")
    return exp, load_config(resolve_beside(exp.base, path), exp.overrides)
