"""The search space as Ray Tune sees it, and the run config of each trial.

Why here and not in the schema: :mod:`robustdx.core.config.sweep` only validates a sweep file; this
module turns its dimensions into Ray Tune domains, lands one sample of them in the base run config
(:func:`trial_config`: the *training* attack, the learning rates and the SupCon temperature change,
the serving ε never does), refuses spaces that cannot work with the base config before any trial
starts (:func:`check_space`), and counts a trial's epochs (the final stage is what ASHA compares;
the epochs on disk are what a restored trial resumes from). Importing it starts no Ray.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from robustdx.core.config import ConfigError, Regime, RunConfig, parse_config
from robustdx.core.config.sweep import Dimension, SpaceConfig, SweepConfig
from robustdx.core.training.recipes import RECIPES, has_classifier, stage_dir


# --------------------------------------------------------------------------------------------
# Ray's search domains
# --------------------------------------------------------------------------------------------
def ray_domain(dim: Dimension) -> Any:
    """The Ray Tune search domain of one dimension (an integer range includes ``high``)."""
    from ray import tune

    if dim.choices is not None:
        return tune.choice(list(dim.choices))
    ranges: dict[str, Callable[[Any, Any], Any]] = {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "randint": lambda lo, hi: tune.randint(lo, hi + 1),  # Tune's upper bound is exclusive
    }
    return ranges[dim.range_kind](dim.low, dim.high)


def param_space(space: SpaceConfig) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of a search space."""
    return {name: ray_domain(dim) for name, dim in space.dimensions().items()}


# --------------------------------------------------------------------------------------------
# trial configs
# --------------------------------------------------------------------------------------------
def _set_eps(raw: dict[str, Any], value: Any, _sweep: SweepConfig) -> None:
    raw["attack"].update(eps=float(value), step_size=None)


def _set_steps(raw: dict[str, Any], value: Any, _sweep: SweepConfig) -> None:
    raw["attack"].update(steps=int(value), step_size=None)


def _set_lr(raw: dict[str, Any], value: Any, sweep: SweepConfig) -> None:
    raw["pretrain"]["lr"] = float(value)
    scale = sweep.space.lr.finetune_lr_scale if sweep.space.lr is not None else None
    if scale is not None and any(key == "finetune" for _, key in RECIPES[raw["recipe"]]):
        raw["finetune"]["lr"] = float(value) * scale


def _set_temperature(raw: dict[str, Any], value: Any, _sweep: SweepConfig) -> None:
    raw["pretrain"]["temperature"] = float(value)


# How each searched parameter lands in the run config (one entry per SpaceConfig field).
PARAM_SETTERS: dict[str, Callable[[dict[str, Any], Any, SweepConfig], None]] = {
    "eps": _set_eps,
    "steps": _set_steps,
    "lr": _set_lr,
    "temperature": _set_temperature,
}


def trial_config(sweep: SweepConfig, base: RunConfig, params: Mapping[str, Any], **fields: Any) -> RunConfig:
    """The run config of one trial: ``base`` with the sampled ``params``, the sweep's robust validation and the
    checkpoint selection that matches the objective; ``fields`` set top-level keys (``name``, ``output_dir``, ...).

    Only the *training* attack changes; ``eval_attack`` (the serving ε) is the base's in every trial.
    """
    unknown = sorted(set(params) - set(PARAM_SETTERS))
    if unknown:
        raise ConfigError(f"unknown sweep parameter(s) {unknown}; valid: {', '.join(PARAM_SETTERS)}")
    raw = base.model_dump(mode="json")
    for name, value in params.items():
        PARAM_SETTERS[name](raw, value, sweep)
    raw.update(val_robust_n=sweep.val_robust_n, monitor=sweep.objective.monitor)
    raw.update({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()})
    return parse_config(raw)


def check_space(sweep: SweepConfig, base: RunConfig) -> None:
    """Fail before any trial starts when the space cannot work with the base config.

    Checks that the recipe ends in a classifier (the objective needs validation accuracy), that a searched
    temperature has a SupCon stage to act on, and that every corner of the space gives a valid run config
    (e.g. ``steps`` with an FGSM attack, a scaled fine-tuning rate of 1 or more).
    """
    regimes = [regime for regime, _ in RECIPES[base.recipe]]
    if not has_classifier(base.recipe):
        raise ConfigError(
            f"recipe {base.recipe.value!r} trains an encoder without a classifier, which a sweep cannot score; "
            f"use {base.recipe.value}_ft (set it in the sweep's overrides: recipe={base.recipe.value}_ft)"
        )
    if sweep.space.temperature is not None and not {Regime.SUPCON, Regime.ADV_SUPCON} & set(regimes):
        raise ConfigError(f"space.temperature: recipe {base.recipe.value!r} has no SupCon stage for a temperature to act on")
    dims = sweep.space.dimensions()
    for corner in itertools.product(*(d.extremes() for d in dims.values())):
        params = dict(zip(dims, corner, strict=True))
        try:
            trial_config(sweep, base, params)
        except ConfigError as err:
            raise ConfigError(f"the search space gives an invalid run config at {params}:\n{err}") from None


# --------------------------------------------------------------------------------------------
# a trial's stages and epochs
# --------------------------------------------------------------------------------------------
def final_stage(cfg: RunConfig) -> tuple[Regime, int]:
    """The regime of the recipe's last stage and the epochs of the stages before it."""
    stages = RECIPES[cfg.recipe]
    before = sum(getattr(cfg, key).epochs for _, key in stages[:-1])
    return stages[-1][0], before


def total_epochs(cfg: RunConfig) -> int:
    """Epochs a trial trains when it runs to the end (all stages)."""
    return sum(getattr(cfg, key).epochs for _, key in RECIPES[cfg.recipe])


def stage_dirs(cfg: RunConfig) -> list[tuple[Path, int]]:
    """Each stage's folder (named as :func:`robustdx.core.training.recipes.run_recipe` names them) and its epochs."""
    return [(stage_dir(cfg, i), getattr(cfg, key).epochs) for i, (_regime, key) in enumerate(RECIPES[cfg.recipe])]


def epochs_on_disk(cfg: RunConfig) -> int:
    """Epochs already trained in ``cfg.run_dir`` (what ``run_recipe`` will resume from)."""
    done = 0
    for folder, epochs in stage_dirs(cfg):
        if (folder / "result.json").is_file():
            done += epochs
        elif (folder / "metrics.jsonl").is_file():
            done += len((folder / "metrics.jsonl").read_text().splitlines())
    return done
