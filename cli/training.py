"""Training and data commands: ``train``, ``experiment``, ``feedback-study``, ``data synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from robustdx.cli.common import ConfigOpt, SetOpt, console, fail, print_metrics
from robustdx.core.config import dump_config, load_config
from robustdx.core.errors import BundleError, ConfigError, DataError

data_app = typer.Typer(help="Data set utilities.", no_args_is_help=True)


def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the resolved config; train nothing.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a recipe (e.g. adv_supcon_ft) from a config; resumes an interrupted run of the same name."""
    from robustdx.flows.tracking import train_tracked

    try:
        cfg = load_config(config, set_ or [])
        if not progress:
            cfg = cfg.model_copy(update={"progress": False})
        if dry_run:
            console.print(dump_config(cfg))
            console.print(f"[dim]dry run: would train recipe {cfg.recipe} into {cfg.run_dir}[/]")
            return
        result, _run = train_tracked(cfg, log=lambda m: console.print(f"[cyan]»[/] {m}"))
    except (ConfigError, DataError, BundleError, FileExistsError) as err:
        fail(err)
    print_metrics(result.metrics)
    console.print(f"bundle: [bold]{result.bundle}[/]\nreport: [bold]{result.report}[/]")


def synth_params(format_: str, per_class: int, size: int, seed: int) -> dict[str, Any]:
    """The writer's arguments for the CLI's options (BUSI: ``per_class`` per class, half as many normals)."""
    if format_ == "camelyon17":
        return {"per_class": per_class, "size": size, "seed": seed}
    return {
        "n_benign": per_class,
        "n_malignant": per_class,
        "n_normal": max(2, per_class // 2),
        "height": size,
        "width": size * 4 // 3,
        "seed": seed,
    }


def ensure_synthetic(out: Path, format_: str, params: dict[str, Any], *, force: bool, rewrite_stale: bool) -> None:
    """Write (or keep, when already written with these settings) a synthetic data set, saying which."""
    from robustdx.core.data import synthetic

    if format_ not in synthetic.DATA_FOLDERS:
        fail(ValueError(f"--format must be one of {', '.join(synthetic.DATA_FOLDERS)}, got {format_!r}"))
    try:
        with console.status(f"writing synthetic {format_} to {out}"):
            done = synthetic.ensure(out, format_, force=force, rewrite_stale=rewrite_stale, **params)
    except (DataError, FileExistsError) as err:
        fail(err)
    if done == "reused":
        console.print(f"{out} already holds this synthetic {format_} data set (same settings; --force rewrites it)")
    else:
        console.print(f"{done} {out / synthetic.DATA_FOLDERS[format_]}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the data set into.")],
    format_: Annotated[str, typer.Option("--format", "-f", help="On-disk layout: camelyon17 (WILDS) or busi.")] = "camelyon17",
    per_class: Annotated[
        int, typer.Option(min=2, help="camelyon17: patches per class per hospital; busi: images per class.")
    ] = 40,
    size: Annotated[int, typer.Option(min=16, max=512, help="Patch side (camelyon17) or image height (busi), pixels.")] = 96,
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same files).")] = 0,
    force: Annotated[
        bool, typer.Option(help="Rewrite the folder's synthetic data set even if it was written with these settings.")
    ] = False,
) -> None:
    """Write a small synthetic data set in the WILDS Camelyon17 or BUSI on-disk format.

    A set written with the same settings is kept; one written with other settings (or by an older
    robustdx, or interrupted) is reported and left alone unless --force.
    """
    ensure_synthetic(out, format_, synth_params(format_, per_class, size, seed), force=force, rewrite_stale=False)


def experiment(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML, e.g. configs/experiments/paper-pcam.yaml.")],
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the cells; train nothing.")] = False,
    report_only: Annotated[
        bool,
        typer.Option(
            "--report-only", help="Write the report from the cells finished so far (says which are missing); train nothing."
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="Cells run at once, each in its own process (a GPU or many cores; 1 on a small CPU)."),
    ] = 1,
) -> None:
    """Regenerate a paper table: every recipe x seed (x fold) on equal budgets, clean/robust accuracy with intervals,
    paired comparisons and attribution scores beside their controls, as a report folder.

    Resumable: finished cells are skipped, an interrupted training resumes.
    """
    from robustdx.core.config import load_experiment

    try:
        exp, base = load_experiment(config, set_ or [])
        from robustdx.core.evaluation.experiment import cell_config, cell_name, cells_of, run_experiment
        from robustdx.core.training.recipes import RECIPES

        if dry_run:
            lines = []
            for cell in cells_of(exp):  # validates every cell's config, budget included
                cfg = cell_config(base, exp, *cell)
                epochs = ", ".join(f"{key} {getattr(cfg, key).epochs}" for _, key in RECIPES[cfg.recipe])
                lines.append(f"  {cell_name(*cell)}: {epochs} epochs")
            console.print(
                f"{len(lines)} cells on {base.data.dataset} ({base.model.arch} @ {base.data.image_size} px):\n"
                + "\n".join(lines)
                + f"\nreport: {exp.output_dir / exp.name}"
            )
            return

        report = run_experiment(
            exp, base, log=lambda m: console.print(f"[cyan]»[/] {m}"), report_only=report_only, workers=workers
        )
    except (ConfigError, DataError, BundleError, ValueError) as err:
        fail(err)
    console.print(f"report: [bold]{report}[/]")


def feedback_study(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Feedback-study YAML, e.g. configs/experiments/feedback-pcam.yaml.")
    ],
    set_: SetOpt = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Render README.md again from the finished study's report.json; run nothing.")
    ] = False,
) -> None:
    """Measure what retraining on clinicians' feedback buys after a stain shift: model A on the base data, a shifted
    production stream through the inference log with reviewers' labels, model B from the data snapshot, both
    scored (paired) on held-out images with and without the shift.

    Resumable: finished models are reused, an interrupted training resumes.
    """
    from robustdx.core.config import load_feedback_study

    try:
        study, base = load_feedback_study(config, set_ or [])
        from robustdx.core.evaluation.feedback_study import rewrite_report, run_feedback_study

        if report_only:
            report = rewrite_report(study, base)
        else:
            report = run_feedback_study(study, base, config, log=lambda m: console.print(f"[cyan]»[/] {m}"))
    except (ConfigError, DataError, BundleError, ValueError, FileNotFoundError) as err:
        fail(err)
    console.print(f"report: [bold]{report}[/]")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(train)
    app.command()(experiment)
    app.command("feedback-study")(feedback_study)
    from robustdx.cli import snapshots

    snapshots.register(data_app)
    app.add_typer(data_app, name="data")
