"""The Tune trainable: what runs in a Ray worker for one trial.

Why its own module: Ray workers find the trial function by its importable path
(``robustdx.flows.tune.trainable.robustdx_trial``; a function of ``__main__`` would be pickled by
value), and this module holds only what a worker needs: train one trial's run config through
:func:`robustdx.core.training.recipes.run_recipe`, report to Tune, and put the run folder back in
step with Tune's checkpoint when a trial is restored.

What is reported to Tune, and why pretraining is never cut short
    ASHA compares trials at equal ``training_iteration``; that is only meaningful when iteration *k*
    measures the same thing in every trial. So only epochs of the recipe's **final stage** are
    reported (the fine-tuning epochs of ``*_ft`` recipes, every epoch of ``ce``/``adv_ce``):
    iteration *k* = final-stage epoch *k*. Pretraining (SupCon, or the ``adv_ce`` stage of
    ``adv_ce_ft``) is never reported and therefore never stopped early; ASHA's ``grace_period``
    counts fine-tuning epochs. Each report carries ``epochs_done`` (pretrain + final-stage epochs
    the trial's model has been through), the cost measure used to compare ASHA with running
    every trial to the end (``benchmarks/asha_vs_full.py``), and the run folder as a Tune checkpoint
    (``last.pt`` of each stage, so ``run_recipe`` resumes *exactly*).

Importing this module starts nothing: Ray is imported inside the functions that need it.
"""

from __future__ import annotations

import shutil
from typing import Any

from robustdx.core.config import RunConfig
from robustdx.core.config.sweep import Objective, SweepConfig
from robustdx.flows.tune.space import epochs_on_disk, final_stage, stage_dirs, trial_config


class _TuneReporter:
    """``run_recipe`` epoch callback: reports final-stage epochs to Tune with the run folder as checkpoint."""

    def __init__(self, cfg: RunConfig, objective: Objective, session_start: int) -> None:
        self.run_dir = cfg.run_dir
        self.metric = objective.metric
        self.final_regime, self.epochs_before = final_stage(cfg)
        self.session_start = session_start

    def __call__(self, metrics: dict[str, Any]) -> None:
        from ray import tune

        if metrics.get("stage") != self.final_regime:
            return  # pretraining: never reported, so never stopped early (see the module docstring)
        epoch = int(metrics["epoch"])
        report: dict[str, Any] = {
            "score": float(metrics[self.metric]),
            "stage": str(metrics["stage"]),
            "epoch": epoch,
            "epochs_done": self.epochs_before + epoch,
            "session_start_epochs": self.session_start,
        }
        report.update({k: float(metrics[k]) for k in ("val_acc", "val_robust_acc", "val_score") if k in metrics})
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(self.run_dir)))


def restore_run_dir(cfg: RunConfig, checkpoint: Any) -> None:
    """Make the trial's run folder agree with what Tune knows.

    With a checkpoint, its contents replace the folder (a killed worker may have trained past the last
    report Tune recorded). Without one, Tune counts from iteration 0 again, so the final stage (and any
    evaluation, bundle or report made from it) is removed and redone, while finished or partial
    pretraining on disk is kept.
    """
    if checkpoint is not None:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        checkpoint.to_directory(str(cfg.run_dir))
        return
    if not cfg.run_dir.is_dir():
        return
    keep = {folder.name for folder, _ in stage_dirs(cfg)[:-1]} | {"config.yaml"}
    for entry in cfg.run_dir.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def robustdx_trial(config: dict[str, Any], sweep_json: dict[str, Any], base_json: dict[str, Any], runs_dir: str) -> None:
    """One Tune trial: train the base run config with the sampled ``config`` in ``runs_dir/<trial_id>``, resumably.

    The sweep and base configs travel as JSON mappings and are validated again here: plain data pickles
    the same whatever way the driver was started (pydantic classes from ``__main__`` would not).
    """
    from ray import tune

    from robustdx.core.training.recipes import run_recipe

    sweep, base = SweepConfig.model_validate(sweep_json), RunConfig.model_validate(base_json)
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(sweep, base, config, name=trial_id, output_dir=runs_dir, progress=False)
    restore_run_dir(cfg, tune.get_checkpoint())
    run_recipe(cfg, callbacks=[_TuneReporter(cfg, sweep.objective, epochs_on_disk(cfg))])
