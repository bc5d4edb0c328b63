"""``robustdx sweep``: the Ray Tune sweep's command line (what ``ray job submit`` sends to a cluster).

The command only parses options, loads and validates the sweep, prints a dry run or the trial table
and maps failures to exit codes; the sweep itself is :func:`robustdx.flows.tune.driver.run_sweep`.
Ray pickles nothing of this module: the trial function is found by name
(``robustdx.flows.tune.trainable.robustdx_trial``) in the workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from robustdx.cli.common import console, fail

if TYPE_CHECKING:
    from robustdx.core.config import RunConfig
    from robustdx.core.config.sweep import SweepConfig
    from robustdx.flows.tune.driver import SweepResult


def _print_dry_run(sweep: SweepConfig, base: RunConfig) -> None:
    """The sweep as validated, its dimensions and the run config of one corner of the space."""
    import yaml

    from robustdx.core.config import dump_config
    from robustdx.flows.tune.space import trial_config

    console.print(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
    for name, dim in sweep.space.dimensions().items():
        console.print(f"  {name}: {dim.describe()}")
    corner = {n: d.extremes()[0] for n, d in sweep.space.dimensions().items()}
    console.print(f"[dim]trial run config at {corner}:[/]")
    console.print(dump_config(trial_config(sweep, base, corner, name="trial")))
    console.print(f"[dim]dry run: would run {sweep.num_samples} trials into {sweep.experiment_dir}[/]")


def _print_result(sweep: SweepConfig, result: SweepResult) -> None:
    """The trial table, the best trial and where the outputs are."""
    from robustdx.flows.tune.results import format_table

    console.print(format_table(result.rows, list(sweep.space.dimensions())))
    console.print(
        f"best: {result.best_params} score={result.best_score:.4f} | trial-epochs {result.total_trial_epochs} "
        f"| {result.wall_seconds:.0f} s\n"
        f"trials:      {result.trials_csv}\nbest config: {result.best_yaml}\nplot:        {result.plot}\n"
        f"retrain the best: robustdx train -c {result.best_yaml}"
    )


def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep file, e.g. configs/sweeps/demo.yaml.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="KEY=VALUE",
            help="Override a key of the sweep file, e.g. --set scheduler=fifo or --set 'space.eps=[2/255]' (repeatable).",
        ),
    ] = None,
    run_set: Annotated[
        list[str] | None,
        typer.Option(
            "--run-set",
            metavar="KEY=VALUE",
            help="Override a key of the base run config for every trial, e.g. --run-set finetune.epochs=4 (repeatable).",
        ),
    ] = None,
    num_samples: Annotated[
        int | None, typer.Option("--num-samples", "-n", min=1, help="Number of trials (same as --set num_samples=N).")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")] = None,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Start over: delete this sweep's previous results instead of resuming them.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, print the search space and a trial's run config, run nothing.")
    ] = False,
) -> None:
    """Ray Tune sweep over the training attack (ε, PGD steps), learning rate and SupCon temperature.

    Runs on a local Ray, or on the cluster in $RAY_ADDRESS (e.g. `ray job submit -- robustdx sweep --config ...`).
    Rerunning the same command resumes an interrupted sweep. Outputs go to <storage_path>/<name>/: trials.csv,
    best.yaml (retrain with `robustdx train -c .../best.yaml`) and score_vs_params.png.
    Exit code 2: invalid configuration; 1: the sweep failed.
    """
    from robustdx.core.config import ConfigError
    from robustdx.flows.tune.driver import SweepError, load_sweep, run_sweep

    console.width = max(console.width, 140)  # the trial table is wide; in logs (no terminal) rich would assume 80 columns
    sets = [*(set_ or []), *([f"num_samples={num_samples}"] if num_samples is not None else [])]
    try:
        swept, base = load_sweep(config, sets, run_set or [])
        if dry_run:
            _print_dry_run(swept, base)
            return
        result = run_sweep(swept, resume=not no_resume, address=address, log=lambda m: console.print(f"[cyan]»[/] {m}"))
    except (ConfigError, ImportError) as exc:
        fail(exc)
    except SweepError as exc:
        fail(f"the sweep failed: {exc}", code=1)
    _print_result(swept, result)


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""
    app.command()(sweep)
