"""Ray Tune sweep over the training attack (ε, PGD steps), the learning rate and the SupCon temperature.

Why a sweep, and what it optimises
    Adversarial training trades clean accuracy for robustness, and the trade depends on the training
    ε, the number of PGD steps and the learning rate. A sweep file (``configs/sweeps/*.yaml``, a
    :class:`SweepConfig`) names a base run config and a search space; every trial trains that run
    config with one sample of the space through the same :func:`robustdx.core.training.recipes.run_recipe`
    as ``robustdx train``. The **serving ε is never searched**: the validation attack
    (``eval_attack``, the ε the model is served and monitored at) stays fixed while the *training*
    attack varies, so trials are scored on the same threat. The default objective ``robust_mean``
    is ``val_score`` = (clean validation accuracy + PGD validation accuracy on ``val_robust_n``
    images at the serving ε) / 2; ``clean`` and ``robust`` use either half alone. The test split is
    never looked at by the search (``run_recipe`` still evaluates finished trials on it, for the record).

What is reported to Tune, and why pretraining is never cut short
    ASHA compares trials at equal ``training_iteration``; that is only meaningful when iteration *k*
    measures the same thing in every trial. So only epochs of the recipe's **final stage** are
    reported (the fine-tuning epochs of ``*_ft`` recipes, every epoch of ``ce``/``adv_ce``):
    iteration *k* = final-stage epoch *k*. Pretraining (SupCon, or the ``adv_ce`` stage of
    ``adv_ce_ft``) is never reported and therefore never stopped early; ASHA's ``grace_period``
    counts fine-tuning epochs. Each report carries ``epochs_done`` (pretrain + final-stage epochs
    the trial's model has been through), the cost measure used to compare ASHA with running
    every trial to the end (``benchmarks/asha_vs_full.py``).

Checkpoints and resumption
    A trial trains in its own run folder ``<storage_path>/<name>/runs/<trial_id>`` (on the disk the
    driver and the workers share), and every report carries that folder as a Tune checkpoint
    (``last.pt`` of each stage, so ``run_recipe`` resumes *exactly*). When Tune restores a trial,
    the checkpoint's contents replace the run folder first, so the folder and Tune's iteration count
    agree. A trial restored without a checkpoint keeps its pretraining progress on disk and redoes its
    final stage (Tune counts those iterations from 0 again). Rerunning the same command after a crash
    or a ``kill -9`` of the driver continues the sweep (``Tuner.restore``); ``--no-resume`` starts over.

Where it runs
    On a local Ray (``ray.init(num_cpus=...)``), or on the cluster named by ``RAY_ADDRESS`` (or
    ``address=``); ``python -m robustdx.flows.tune`` is the entry point ``ray job submit`` sends.
    Importing this module starts nothing: Ray is imported inside the functions that need it.

Outputs in ``<storage_path>/<name>/``: Ray's experiment state and trial folders, ``sweep.json`` (the
sweep and base config it was started with; a resume with another configuration is refused),
``trials.csv`` (one row per trial), ``best.yaml`` (the best trial's complete run config, to retrain
with ``robustdx train -c .../best.yaml``) and ``score_vs_params.png``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from robustdx.core.config import ConfigError, Regime, RunConfig, dump_config, load_config, parse_config
from robustdx.core.config.base import load_yaml, resolve_beside
from robustdx.core.config.sweep import Dimension, Objective, SpaceConfig, SweepConfig, parse_sweep
from robustdx.core.training.recipes import RECIPES, VOLATILE_KEYS, has_classifier, stage_dir

Log = Callable[[str], None]
TRIAL_RUNS = "runs"  # sub-folder of the experiment folder holding one run folder per trial
SWEEP_RECORD = "sweep.json"
# Sweep keys that may change on resume: they only decide where and with what resources trials run.
_VOLATILE_SWEEP = frozenset({"base", "storage_path", "num_cpus", "resources_per_trial"})


# --------------------------------------------------------------------------------------------
# configuration: the schema is robustdx.core.config.sweep; here, loading and Ray's search domains
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


def load_sweep(
    path: str | Path, overrides: Sequence[str] = (), run_overrides: Sequence[str] = ()
) -> tuple[SweepConfig, RunConfig]:
    """Load a sweep file and the base run config it names, and check the space against that base.

    Args:
        path: the sweep YAML.
        overrides: ``key=value`` changes to the sweep file (``num_samples=4``, ``space.eps=[...]``).
        run_overrides: ``key=value`` changes to the base run config, appended to the file's ``overrides``.

    Returns:
        The sweep (``base`` made absolute: next to the sweep file when it exists there, else from the
        working directory) and its base run config.
    """
    path = Path(path)
    sweep = parse_sweep(load_yaml(path, "sweep file"), overrides)
    base_path = resolve_beside(sweep.base, path)
    if not base_path.is_file():
        raise ConfigError(
            f"{path}: base {str(sweep.base)!r} does not exist (looked next to the sweep file, in {path.parent}, "
            f"and in the working directory {Path.cwd()})"
        )
    sweep = sweep.model_copy(update={"base": base_path.resolve(), "overrides": [*sweep.overrides, *run_overrides]})
    base = load_config(sweep.base, sweep.overrides)
    check_space(sweep, base)
    return sweep, base


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


def final_stage(cfg: RunConfig) -> tuple[Regime, int]:
    """The regime of the recipe's last stage and the epochs of the stages before it."""
    stages = RECIPES[cfg.recipe]
    before = sum(getattr(cfg, key).epochs for _, key in stages[:-1])
    return stages[-1][0], before


def total_epochs(cfg: RunConfig) -> int:
    """Epochs a trial trains when it runs to the end (all stages)."""
    return sum(getattr(cfg, key).epochs for _, key in RECIPES[cfg.recipe])


def _stage_dirs(cfg: RunConfig) -> list[tuple[Path, int]]:
    """Each stage's folder (named as :func:`robustdx.core.training.recipes.run_recipe` names them) and its epochs."""
    return [(stage_dir(cfg, i), getattr(cfg, key).epochs) for i, (_regime, key) in enumerate(RECIPES[cfg.recipe])]


def epochs_on_disk(cfg: RunConfig) -> int:
    """Epochs already trained in ``cfg.run_dir`` (what ``run_recipe`` will resume from)."""
    done = 0
    for folder, epochs in _stage_dirs(cfg):
        if (folder / "result.json").is_file():
            done += epochs
        elif (folder / "metrics.jsonl").is_file():
            done += len((folder / "metrics.jsonl").read_text().splitlines())
    return done


# --------------------------------------------------------------------------------------------
# the trainable (runs in a Ray worker)
# --------------------------------------------------------------------------------------------
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
    keep = {folder.name for folder, _ in _stage_dirs(cfg)[:-1]} | {"config.yaml"}
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


# --------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What a sweep produced. ``rows`` has one dict per trial (see :data:`ROW_FIELDS`)."""

    results_dir: Path  # <storage_path>/<name>: Ray's experiment folder plus the files below
    best_params: dict[str, Any]  # the best trial's sampled parameters (eps in pixel units)
    best_score: float  # its best objective value over the epochs it reported
    best_config: RunConfig  # the complete run config to retrain the best trial (also best.yaml)
    rows: list[dict[str, Any]]
    total_trial_epochs: int  # sum over trials of the epochs each trial's model went through
    wall_seconds: float  # of this call (a resumed sweep counts only the resumed part)
    trials_csv: Path
    best_yaml: Path
    plot: Path


# Columns of SweepResult.rows / trials.csv besides the searched parameters (inserted after "status").
ROW_FIELDS = (
    "trial_id",
    "status",  # completed (all epochs), stopped (early, by ASHA), error, not started
    "score",  # best objective value over the reported epochs
    "val_acc",  # clean validation accuracy at that epoch
    "val_robust_acc",  # PGD validation accuracy (serving ε) at that epoch
    "best_epoch",  # final-stage epoch of the best score
    "iterations",  # reports (final-stage epochs) Tune received
    "trial_epochs",  # pretrain + final-stage epochs the model went through
    "epochs_trained",  # epochs actually computed, counting any redone after a restore
    "sessions",  # worker processes the trial ran in (1 + restores)
    "error",
)


class SweepError(RuntimeError):
    """A sweep ended without any trial reporting a score; the message lists the trial errors."""


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the sweep needs Ray Tune ({err}); install the extra: pip install 'robustdx[orchestrate]'") from None


def _init_ray(sweep: SweepConfig, address: str | None, log: Log) -> tuple[bool, bool]:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray.

    Returns:
        (started, local): whether this call started Ray (and must shut it down), and whether that Ray is a
        local one of this process (whose resources cannot grow, unlike a cluster's).
    """
    import ray

    if ray.is_initialized():
        return False, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, include_dashboard=False)
        return True, False
    cpus = sweep.num_cpus or os.cpu_count() or 1
    log(f"starting a local Ray with {cpus} CPUs")
    ray.init(num_cpus=cpus, include_dashboard=False)
    return True, True


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """Ray resources of one trial; ``gpu: null`` means 1 GPU when the driver's machine has CUDA, else none."""
    import torch

    gpu = sweep.resources_per_trial.gpu
    if gpu is None:
        gpu = 1 if torch.cuda.is_available() else 0
    return {"cpu": sweep.resources_per_trial.cpu, "gpu": gpu}


def check_resources(need: Mapping[str, float], have: Mapping[str, float], strict: bool, log: Log) -> None:
    """Refuse (``strict``: a local Ray) or warn (a cluster may autoscale) when no node could ever run a trial:
    otherwise Tune would wait for resources forever."""
    short = {k: v for k, v in need.items() if v > have.get(k.upper(), 0.0)}
    if not short:
        return
    msg = (
        f"a trial needs {', '.join(f'{v:g} {k.upper()}' for k, v in short.items())} but Ray has "
        f"{', '.join(f'{have.get(k.upper(), 0.0):g} {k.upper()}' for k in short)}; lower resources_per_trial "
        "(e.g. --set resources_per_trial.gpu=0 --set resources_per_trial.cpu=1) or give a local Ray more num_cpus"
    )
    if strict:
        raise ConfigError(msg)
    log(f"warning: {msg} (trials wait until the cluster has such a node)")


def _searcher(sweep: SweepConfig) -> Any:
    """The seeded search algorithm, limited to ``max_concurrent`` trials at once."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if sweep.search == "random":
        return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=sweep.max_concurrent or 0)
    from ray.tune.search.optuna import OptunaSearch

    optuna = OptunaSearch(seed=sweep.seed)
    return ConcurrencyLimiter(optuna, max_concurrent=sweep.max_concurrent) if sweep.max_concurrent else optuna


def _scheduler(sweep: SweepConfig, base: RunConfig) -> Any:
    """ASHA over final-stage epochs; trials that reach the last epoch finish by themselves (``stop_last_trials=False``)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    max_t = getattr(base, RECIPES[base.recipe][-1][1]).epochs
    if sweep.asha.grace_period > max_t:
        raise ConfigError(f"asha.grace_period={sweep.asha.grace_period} exceeds the final stage's {max_t} epochs")
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=sweep.asha.grace_period,
        reduction_factor=sweep.asha.reduction_factor,
        stop_last_trials=False,
    )


def _trainable(sweep: SweepConfig, base: RunConfig, runs_dir: Path) -> Any:
    """The trial function with its fixed arguments and resources (needed again by ``Tuner.restore``)."""
    from ray import tune

    fn = tune.with_parameters(
        robustdx_trial,
        sweep_json=sweep.model_dump(mode="json"),
        base_json=base.model_dump(mode="json"),
        runs_dir=str(runs_dir),
    )
    return tune.with_resources(fn, trial_resources(sweep))


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    """Paths made absolute from the driver's working directory: trials run in their own working directories."""
    data = cfg.data.model_copy(update={"root": cfg.data.root.resolve()})
    model = cfg.model.model_copy(update={"weights": cfg.model.weights.resolve() if cfg.model.weights else None})
    return cfg.model_copy(update={"data": data, "model": model})


def _record(sweep: SweepConfig, base: RunConfig) -> dict[str, Any]:
    return {
        "sweep": {k: v for k, v in sweep.model_dump(mode="json").items() if k not in _VOLATILE_SWEEP},
        "base": {k: v for k, v in base.model_dump(mode="json").items() if k not in VOLATILE_KEYS},
    }


def prepare_folder(sweep: SweepConfig, base: RunConfig, resume: bool, log: Log) -> None:
    """Start over (``resume=False``), or refuse to resume a folder holding a sweep of another configuration."""
    folder = sweep.experiment_dir
    if not resume and folder.exists():
        log(f"--no-resume: deleting the previous results in {folder}")
        shutil.rmtree(folder)
    record, saved = _record(sweep, base), folder / SWEEP_RECORD
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old != record:
            diff = sorted(
                f"{part}.{k}"
                for part in record
                for k in set(record[part]) | set(old.get(part, {}))
                if record[part].get(k) != old.get(part, {}).get(k)
            )
            raise ConfigError(
                f"{folder} holds a sweep with a different configuration (differs in: {', '.join(diff)}). "
                "A resumed sweep keeps its original settings: use --no-resume to start over (deletes it) or another name."
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(record, indent=2))


def _tuner(sweep: SweepConfig, base: RunConfig, log: Log) -> Any:
    """A fresh Tuner, or the interrupted sweep's restored one."""
    from ray import tune

    folder = sweep.experiment_dir
    trainable = _trainable(sweep, _absolute_paths(base), folder / TRIAL_RUNS)
    if tune.Tuner.can_restore(str(folder)):
        log(f"resuming the sweep in {folder}")
        return tune.Tuner.restore(str(folder), trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(sweep.space),
        tune_config=tune.TuneConfig(
            metric="score",
            mode="max",
            num_samples=sweep.num_samples,
            search_alg=_searcher(sweep),
            scheduler=_scheduler(sweep, base),
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=str(folder.parent),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            verbose=1,
        ),
    )


def trial_row(trial_id: str, params: Mapping[str, Any], reports: list[dict[str, Any]], error: str | None, epochs: int) -> dict:
    """One row of the results table from a trial's reports (in the order Tune received them)."""
    row: dict[str, Any] = {"trial_id": trial_id, "status": "", **params}
    row.update({k: None for k in ROW_FIELDS if k not in row})
    scored = [r for r in reports if r.get("score") is not None]
    if scored:
        best = max(scored, key=lambda r: r["score"])
        sessions: dict[Any, list[dict[str, Any]]] = {}
        for r in scored:
            sessions.setdefault(r.get("pid"), []).append(r)
        row.update(
            score=float(best["score"]),
            val_acc=best.get("val_acc"),
            val_robust_acc=best.get("val_robust_acc"),
            best_epoch=int(best["epoch"]),
            iterations=int(max(r.get("training_iteration", 0) for r in scored)),
            trial_epochs=int(max(r["epochs_done"] for r in scored)),
            epochs_trained=int(
                sum(max(r["epochs_done"] for r in s) - min(r["session_start_epochs"] for r in s) for s in sessions.values())
            ),
            sessions=len(sessions),
        )
    row["error"] = error
    if error:
        row["status"] = "error"
    elif not scored:
        row["status"] = "not started"
    else:
        row["status"] = "completed" if row["trial_epochs"] >= epochs else "stopped"
    return row


def _trial_id_from_path(path: str) -> str:
    """Tune names trial folders ``<trainable>_<trial_id>_<index>_<params>_<date>``."""
    match = re.match(r"robustdx_trial_([0-9a-f]+(?:_[0-9]+)?)_", Path(path).name)
    return match.group(1) if match else Path(path).name


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest score; on a tie the earliest trial (Tune's ``_NNNNN`` index), so that the
    same sweep picks the same configuration whatever order the trials finished in."""

    def index(row: dict[str, Any]) -> int:
        match = re.search(r"_([0-9]+)$", str(row.get("trial_id", "")))
        return int(match.group(1)) if match else 0

    return max(rows, key=lambda r: (r["score"], -index(r)))


def _drop_nan(record: dict[str, Any]) -> dict[str, Any]:
    """A result row without the NaN cells pandas fills in for keys a report did not have."""
    return {k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}


def _rows(grid: Any, sweep: SweepConfig, base: RunConfig) -> list[dict[str, Any]]:
    names = list(sweep.space.dimensions())
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        reports = [_drop_nan(r) for r in df.to_dict("records")] if df is not None else []
        trial_id = result.metrics.get("trial_id") or _trial_id_from_path(result.path)
        params = {k: result.config.get(k) for k in names}
        error = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}" if result.error else None
        rows.append(trial_row(trial_id, params, reports, error, total_epochs(base)))
    return sorted(rows, key=lambda r: r["trial_id"])


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    fields = list(rows[0]) if rows else list(ROW_FIELDS)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_scores(path: Path, rows: list[dict[str, Any]], params: list[str], objective: Objective) -> Path:
    """Score against each searched parameter, one panel per parameter; the best trial is starred."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(4 * len(params), 3.4), layout="constrained")
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    scored = [r for r in rows if r["score"] is not None]
    best = best_row(scored) if scored else None
    markers = {"completed": ("o", "tab:blue"), "stopped": ("v", "tab:orange")}
    for ax, name in zip(axes, params, strict=True):
        scale = 255 if name == "eps" else 1
        for status, (marker, colour) in markers.items():
            pts = [(r[name] * scale, r["score"]) for r in scored if r["status"] == status]
            if pts:
                ax.scatter(*zip(*pts, strict=True), marker=marker, color=colour, label=status, alpha=0.8)
        if best is not None:
            ax.scatter([best[name] * scale], [best["score"]], marker="*", s=220, color="tab:red", label="best", zorder=3)
        if name == "lr":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training ε (×1/255)" if name == "eps" else name)
        ax.set_ylabel(f"score ({objective.metric})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"validation score vs hyper-parameters ({len(scored)} trials)")
    fig.savefig(path, dpi=120)
    return path


def run_sweep(cfg: SweepConfig, resume: bool = True, address: str | None = None, log: Log = lambda _m: None) -> SweepResult:
    """Run (or resume) a sweep to the end and write ``trials.csv``, ``best.yaml`` and ``score_vs_params.png``.

    Args:
        cfg: the sweep; a relative ``base`` is read from the working directory (:func:`load_sweep` resolves it).
        resume: continue the sweep in ``<storage_path>/<name>`` when there is one; False deletes it first.
        address: a Ray cluster; default ``$RAY_ADDRESS``, else a local Ray. Ray is shut down at the end only when
            this call started it (an already initialised Ray is used as it is).
        log: progress messages.

    Raises:
        ConfigError: an invalid space for the base config, or resuming a sweep with another configuration.
        SweepError: no trial reported a score (``trials.csv`` is written first).
    """
    _require_ray()
    t0 = time.perf_counter()
    base = load_config(cfg.base, cfg.overrides)
    check_space(cfg, base)
    _scheduler(cfg, base)  # configuration errors before anything starts
    prepare_folder(cfg, base, resume, log)
    import ray

    started, local = _init_ray(cfg, address, log)
    try:
        check_resources(trial_resources(cfg), ray.cluster_resources(), strict=local, log=log)
        grid = _tuner(cfg, base, log).fit()
    finally:
        if started:
            ray.shutdown()
    folder = cfg.experiment_dir
    rows = _rows(grid, cfg, base)
    trials_csv = write_csv(folder / "trials.csv", rows)
    scored = [r for r in rows if r["score"] is not None]
    if not scored:
        errors = "\n".join(f"  {r['trial_id']}: {r['error'] or r['status']}" for r in rows)
        raise SweepError(f"no trial of sweep {cfg.name!r} reported a score ({trials_csv}):\n{errors}")
    best = best_row(scored)
    params = list(cfg.space.dimensions())
    best_params = {k: best[k] for k in params}
    best_config = trial_config(cfg, base, best_params, name=f"{cfg.name}-best")
    best_yaml = folder / "best.yaml"
    best_yaml.write_text(
        f"# best trial {best['trial_id']} of sweep {cfg.name!r}: {cfg.objective.metric}={best['score']:.4f}\n"
        + dump_config(best_config)
    )
    plot = plot_scores(folder / "score_vs_params.png", rows, params, cfg.objective)
    return SweepResult(
        results_dir=folder,
        best_params=best_params,
        best_score=float(best["score"]),
        best_config=best_config,
        rows=rows,
        total_trial_epochs=sum(int(r["trial_epochs"] or 0) for r in rows),
        wall_seconds=time.perf_counter() - t0,
        trials_csv=trials_csv,
        best_yaml=best_yaml,
        plot=plot,
    )


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _fmt(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "eps":
        return f"{value * 255:.3g}/255"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], params: list[str]) -> Any:
    """A rich table of the trials, best score first."""
    from rich.table import Table

    cols = ["trial_id", "status", *params, "score", "val_acc", "val_robust_acc", "iterations", "trial_epochs"]
    table = Table(title="sweep trials (best first)")
    for col in cols:
        table.add_column(col, justify="right" if col not in ("trial_id", "status") else "left")
    for row in sorted(rows, key=lambda r: -1 if r["score"] is None else r["score"], reverse=True):
        table.add_row(*(_fmt(c, row.get(c)) for c in cols))
    return table


def build_parser(prog: str = "python -m robustdx.flows.tune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Ray Tune sweep over the training attack (eps, PGD steps), learning rate and SupCon temperature. "
        "Runs on a local Ray, or on the cluster in $RAY_ADDRESS (e.g. via `ray job submit -- python -m robustdx.flows.tune "
        "--config ...`). Rerunning the same command resumes an interrupted sweep.",
        epilog="Outputs go to <storage_path>/<name>/: trials.csv, best.yaml (retrain with `robustdx train -c .../best.yaml`) "
        "and score_vs_params.png.",
    )
    parser.add_argument("--config", "-c", type=Path, required=True, help="sweep file, e.g. configs/sweeps/demo.yaml")
    parser.add_argument(
        "--set",
        "-s",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the sweep file, e.g. --set scheduler=fifo or --set 'space.eps=[2/255]' (repeatable)",
    )
    parser.add_argument(
        "--run-set",
        dest="run_sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the base run config for every trial, e.g. --run-set finetune.epochs=4 (repeatable)",
    )
    parser.add_argument("--num-samples", "-n", type=int, help="number of trials (same as --set num_samples=N)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--no-resume", action="store_true", help="start over: delete this sweep's previous results instead of resuming them"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, print the search space and a trial's run config, run nothing"
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m robustdx.flows.tune") -> int:
    """Command line entry point; returns the exit code (2: invalid configuration, 1: the sweep failed).

    ``prog`` names the command in ``--help`` (``robustdx sweep`` passes its own name).
    """
    from rich.console import Console

    args = build_parser(prog).parse_args(argv)
    out, err = Console(), Console(stderr=True, soft_wrap=True)
    out.width = max(out.width, 140)  # the trial table is wide; in logs (no terminal) rich would assume 80 columns
    # Every trial checkpoint forces an experiment-state snapshot (CheckpointConfig(num_to_keep=1)), which keeps a
    # resumed sweep consistent with the trials' latest checkpoints; Ray warns about the snapshot rate otherwise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sets = [*args.sets, *([f"num_samples={args.num_samples}"] if args.num_samples is not None else [])]
    try:
        sweep, base = load_sweep(args.config, sets, args.run_sets)
        if args.dry_run:
            out.print(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
            for name, dim in sweep.space.dimensions().items():
                out.print(f"  {name}: {dim.describe()}")
            corner = {n: d.extremes()[0] for n, d in sweep.space.dimensions().items()}
            out.print(f"[dim]trial run config at {corner}:[/]")
            out.print(dump_config(trial_config(sweep, base, corner, name="trial")))
            out.print(f"[dim]dry run: would run {sweep.num_samples} trials into {sweep.experiment_dir}[/]")
            return 0
        result = run_sweep(sweep, resume=not args.no_resume, address=args.address, log=lambda m: out.print(f"[cyan]»[/] {m}"))
    except (ConfigError, ImportError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return 2
    except SweepError as exc:
        err.print(f"[bold red]sweep failed:[/] {exc}")
        return 1
    out.print(format_table(result.rows, list(sweep.space.dimensions())))
    out.print(
        f"best: {result.best_params} score={result.best_score:.4f} | trial-epochs {result.total_trial_epochs} "
        f"| {result.wall_seconds:.0f} s\n"
        f"trials:      {result.trials_csv}\nbest config: {result.best_yaml}\nplot:        {result.plot}\n"
        f"retrain the best: robustdx train -c {result.best_yaml}"
    )
    return 0
