"""Configuration: pydantic models validated from YAML, with errors that name the key and the fix.

* :mod:`.base` — what every config shares (strict models, pixel-unit budgets, the YAML loader, overrides);
* :mod:`.run` — one training run (:class:`RunConfig`), the source of every other config;
* :mod:`.experiment` — a paper table (:class:`ExperimentConfig`);
* :mod:`.sweep` — a Ray Tune sweep (:class:`SweepConfig`);
* :mod:`.study` — the feedback study (:class:`FeedbackStudyConfig`).

The run config's names are re-exported here, as everything that trains, serves or sweeps uses them.
"""

from robustdx.core.config.base import PixelBudget, PixelFloat, apply_overrides, format_errors, load_yaml
from robustdx.core.config.experiment import (
    PAPER_RECIPES,
    AttributionSettings,
    Budget,
    ExperimentConfig,
    SuiteConfig,
    load_experiment,
)
from robustdx.core.config.run import (
    AdversarialSchedule,
    AttackConfig,
    AttackSpace,
    DataConfig,
    DatasetName,
    FinetuneMode,
    ModelConfig,
    Recipe,
    Regime,
    RunConfig,
    StageConfig,
    dump_config,
    load_config,
    parse_config,
)
from robustdx.core.config.study import FeedbackStudyConfig, StainShift, load_feedback_study
from robustdx.core.errors import ConfigError

__all__ = [
    "PAPER_RECIPES",
    "AdversarialSchedule",
    "AttackConfig",
    "AttackSpace",
    "AttributionSettings",
    "Budget",
    "ConfigError",
    "DataConfig",
    "DatasetName",
    "ExperimentConfig",
    "FeedbackStudyConfig",
    "FinetuneMode",
    "ModelConfig",
    "PixelBudget",
    "PixelFloat",
    "Recipe",
    "Regime",
    "RunConfig",
    "StageConfig",
    "StainShift",
    "SuiteConfig",
    "apply_overrides",
    "dump_config",
    "format_errors",
    "load_config",
    "load_experiment",
    "load_feedback_study",
    "load_yaml",
    "parse_config",
]
