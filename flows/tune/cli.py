"""The sweep's command line: ``python -m robustdx.flows.tune`` (what ``ray job submit`` sends to a cluster)
and ``robustdx sweep``.

Why its own module: the command line only parses options, loads and validates the sweep, prints a dry
run or the trial table and maps failures to exit codes; the sweep itself is :func:`robustdx.flows.tune.driver.run_sweep`.
Importing it starts no Ray.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from robustdx.core.config import ConfigError, RunConfig, dump_config
from robustdx.core.config.sweep import SweepConfig
from robustdx.flows.tune.driver import SweepError, SweepResult, load_sweep, run_sweep
from robustdx.flows.tune.results import format_table
from robustdx.flows.tune.space import trial_config

if TYPE_CHECKING:
    from rich.console import Console


def build_parser(prog: str = "python -m robustdx.flows.tune") -> argparse.ArgumentParser:
    """The sweep's options; ``prog`` names the command in ``--help``."""
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


def _print_dry_run(out: Console, sweep: SweepConfig, base: RunConfig) -> None:
    """The sweep as validated, its dimensions and the run config of one corner of the space."""
    out.print(yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False))
    for name, dim in sweep.space.dimensions().items():
        out.print(f"  {name}: {dim.describe()}")
    corner = {n: d.extremes()[0] for n, d in sweep.space.dimensions().items()}
    out.print(f"[dim]trial run config at {corner}:[/]")
    out.print(dump_config(trial_config(sweep, base, corner, name="trial")))
    out.print(f"[dim]dry run: would run {sweep.num_samples} trials into {sweep.experiment_dir}[/]")


def _print_result(out: Console, sweep: SweepConfig, result: SweepResult) -> None:
    """The trial table, the best trial and where the outputs are."""
    out.print(format_table(result.rows, list(sweep.space.dimensions())))
    out.print(
        f"best: {result.best_params} score={result.best_score:.4f} | trial-epochs {result.total_trial_epochs} "
        f"| {result.wall_seconds:.0f} s\n"
        f"trials:      {result.trials_csv}\nbest config: {result.best_yaml}\nplot:        {result.plot}\n"
        f"retrain the best: robustdx train -c {result.best_yaml}"
    )


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
            _print_dry_run(out, sweep, base)
            return 0
        result = run_sweep(sweep, resume=not args.no_resume, address=args.address, log=lambda m: out.print(f"[cyan]»[/] {m}"))
    except (ConfigError, ImportError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return 2
    except SweepError as exc:
        err.print(f"[bold red]sweep failed:[/] {exc}")
        return 1
    _print_result(out, sweep, result)
    return 0
