"""The sweep driver: a Ray Tune sweep over the training attack (ε, PGD steps), the learning rate and the SupCon
temperature, run (or resumed) to the end.

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

The modules
    :mod:`.space` (Ray's search domains, each trial's run config, the space checked against the base
    config), :mod:`.trainable` (the trial that runs in a Ray worker, and what it reports to Tune: only
    final-stage epochs, so pretraining is never cut short), :mod:`.results` (trial rows, best trial,
    plot, table), this driver (Ray, searcher, scheduler, the sweep folder, :func:`run_sweep`) and
    the command line ``robustdx sweep`` (:mod:`robustdx.cli.sweep`).

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
    ``address=``); ``robustdx sweep`` is the entry point ``ray job submit`` sends.
    Importing this module starts nothing: Ray is imported inside the functions that need it.

Outputs in ``<storage_path>/<name>/``: Ray's experiment state and trial folders, ``sweep.json`` (the
sweep and base config it was started with; a resume with another configuration is refused),
``trials.csv`` (one row per trial), ``best.yaml`` (the best trial's complete run config, to retrain
with ``robustdx train -c .../best.yaml``), ``score_vs_params.png`` and ``mlflow-run-id`` (the sweep's parent run in
MLflow, :mod:`robustdx.flows.tracking`; each trial is a child run of it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustdx.core.config import ConfigError, RunConfig, dump_config, load_config
from robustdx.core.config.base import load_yaml, resolve_beside
from robustdx.core.config.sweep import SweepConfig, parse_sweep
from robustdx.core.training.recipes import RECIPES, VOLATILE_KEYS
from robustdx.core.util import write_csv
from robustdx.flows import tracking
from robustdx.flows.tune.results import ROW_FIELDS, best_row, grid_rows, plot_scores
from robustdx.flows.tune.space import check_space, param_space, trial_config
from robustdx.flows.tune.trainable import robustdx_trial

Log = Callable[[str], None]
TRIAL_RUNS = "runs"  # sub-folder of the experiment folder holding one run folder per trial
SWEEP_RECORD = "sweep.json"
MLFLOW_RUN_FILE = "mlflow-run-id"  # the sweep's parent MLflow run, continued when the sweep resumes
# Sweep keys that may change on resume: they only decide where and with what resources trials run.
_VOLATILE_SWEEP = frozenset({"base", "storage_path", "num_cpus", "resources_per_trial"})


# --------------------------------------------------------------------------------------------
# configuration: the schema is robustdx.core.config.sweep; here, loading it with its base run config
# --------------------------------------------------------------------------------------------
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
# the driver
# --------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What a sweep produced. ``rows`` has one dict per trial (see :data:`robustdx.flows.tune.results.ROW_FIELDS`)."""

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


def _read(path: Path) -> str | None:
    return path.read_text().strip() or None if path.is_file() else None


def _tuner(sweep: SweepConfig, base: RunConfig, log: Log, callbacks: Sequence[Any] = ()) -> Any:
    """A fresh Tuner, or the interrupted sweep's restored one (which keeps the callbacks it was started with)."""
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
            callbacks=list(callbacks),
            verbose=1,
        ),
    )


def _fit(sweep: SweepConfig, base: RunConfig, address: str | None, log: Log, callbacks: Sequence[Any] = ()) -> Any:
    """Run the trials on Ray (started here, or the one already initialised) and return Tune's ``ResultGrid``."""
    import ray

    started, local = _init_ray(sweep, address, log)
    try:
        check_resources(trial_resources(sweep), ray.cluster_resources(), strict=local, log=log)
        return _tuner(sweep, base, log, callbacks).fit()
    finally:
        if started:
            ray.shutdown()


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
    # Every trial checkpoint forces an experiment-state snapshot (CheckpointConfig(num_to_keep=1)), which keeps a
    # resumed sweep consistent with the trials' latest checkpoints; Ray warns about the snapshot rate otherwise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    t0 = time.perf_counter()
    base = load_config(cfg.base, cfg.overrides)
    check_space(cfg, base)
    _scheduler(cfg, base)  # configuration errors before anything starts
    prepare_folder(cfg, base, resume, log)
    folder = cfg.experiment_dir
    run_file = folder / MLFLOW_RUN_FILE
    with tracking.tracked_run(
        tracking.SWEEP, cfg.name, tags={"objective": cfg.objective.metric}, resume=_read(run_file)
    ) as parent:
        if parent.run_id:
            run_file.write_text(parent.run_id)
        parent.log_params({"num_samples": cfg.num_samples, "base": str(cfg.base), "space": cfg.space.model_dump(mode="json")})
        grid = _fit(cfg, base, address, log, tracking.tune_callbacks(parent, cfg.name))
        rows = grid_rows(grid, cfg, base)
        trials_csv = write_csv(folder / "trials.csv", rows, list(rows[0]) if rows else list(ROW_FIELDS))
        parent.log_artifact(trials_csv)
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
        parent.log_metrics({"best_score": float(best["score"]), "trials": len(rows), "scored_trials": len(scored)})
        parent.set_tags({"best_trial": best["trial_id"], **{f"best.{k}": v for k, v in best_params.items()}})
        for path in (best_yaml, plot):
            parent.log_artifact(path)
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
