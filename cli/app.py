"""The ``robustdx`` command line (Typer).

Heavy optional packages (Prefect, Ray, BentoML) are imported inside the commands that need them,
so the core commands work with only ``pip install robustdx``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from robustdx.core.config import dump_config, load_config
from robustdx.core.errors import BundleError, ConfigError, DataError

app = typer.Typer(
    help="Adversarially robust, interpretable medical image classification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Data set utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True)  # no hard line breaks in messages: they are grepped and piped into logs
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML preset, e.g. configs/demo.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set pretrain.epochs=2 (repeatable).")]


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


def _train(config: Path, overrides: list[str], dry_run: bool, progress: bool) -> None:
    from robustdx.core.training.recipes import run_recipe

    try:
        cfg = load_config(config, overrides)
        if not progress:
            cfg = cfg.model_copy(update={"progress": False})
        if dry_run:
            console.print(dump_config(cfg))
            console.print(f"[dim]dry run: would train recipe {cfg.recipe} into {cfg.run_dir}[/]")
            return
        result = run_recipe(cfg, log=lambda m: console.print(f"[cyan]»[/] {m}"))
    except (ConfigError, DataError, BundleError, FileExistsError) as err:
        _fail(err)
        return
    _print_metrics(result.metrics)
    console.print(f"bundle: [bold]{result.bundle}[/]\nreport: [bold]{result.report}[/]")


def _print_metrics(metrics: dict) -> None:
    table = Table(title="test results")
    for col in ("split", "accuracy", "balanced acc", "AUC", "robust acc"):
        table.add_column(col)
    if "robust" in metrics:
        t, r = metrics["test"], metrics["robust"]
        table.add_row(
            "test",
            f"{t['acc']:.4f}",
            f"{t['bal_acc']:.4f}",
            f"{t['auc']:.4f}",
            f"{r['robust_acc']:.4f} (ε={r['eps'] * 255:.1f}/255, n={r['n']})",
        )
    else:
        table.add_row("test", f"centroid {metrics['test']['centroid_acc']:.4f}", "", "", "")
    console.print(table)


@app.command()
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the resolved config; train nothing.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a recipe (e.g. adv_supcon_ft) from a config; resumes an interrupted run of the same name."""
    _train(config, set_ or [], dry_run, progress)


def _synth_params(format_: str, per_class: int, size: int, seed: int) -> dict[str, Any]:
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


def _ensure_synthetic(out: Path, format_: str, params: dict[str, Any], *, force: bool, rewrite_stale: bool) -> None:
    from robustdx.core.data import synthetic

    if format_ not in synthetic.DATA_FOLDERS:
        _fail(ValueError(f"--format must be one of {', '.join(synthetic.DATA_FOLDERS)}, got {format_!r}"))
    try:
        with console.status(f"writing synthetic {format_} to {out}"):
            done = synthetic.ensure(out, format_, force=force, rewrite_stale=rewrite_stale, **params)
    except (DataError, FileExistsError) as err:
        _fail(err)
        return
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
    _ensure_synthetic(out, format_, _synth_params(format_, per_class, size, seed), force=force, rewrite_stale=False)


@app.command()
def info(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (runs/NAME/bundle).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Verify a model bundle (SHA-256 of every file, architecture) and show what it holds."""
    from robustdx.core.release.bundle import load_bundle

    try:
        b = load_bundle(bundle)
    except BundleError as err:
        _fail(err)
        return
    summary = {
        "path": str(b.path),
        "version": b.version,
        "arch": b.config.model.arch,
        "recipe": str(b.config.recipe),
        "dataset": str(b.config.data.dataset),
        "image_size": b.config.data.image_size,
        "created": b.manifest["created"],
        "metrics": {k: v for k, v in b.metrics.items() if k != "stages"},
        "reference": {k: list(v.shape) for k, v in b.reference.items()},
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[green]verified[/] bundle {b.path} — version [bold]{b.version}[/]")
    console.print(
        f"{summary['recipe']} on {summary['dataset']} ({summary['arch']} @ {summary['image_size']} px), "
        f"created {summary['created']}"
    )
    _print_metrics(b.metrics)


@app.command()
def experiment(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML, e.g. configs/paper-pcam.yaml.")],
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the cells; train nothing.")] = False,
    report_only: Annotated[
        bool,
        typer.Option(
            "--report-only", help="Write the report from the cells finished so far (says which are missing); train nothing."
        ),
    ] = False,
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

        report = run_experiment(exp, base, log=lambda m: console.print(f"[cyan]»[/] {m}"), report_only=report_only)
    except (ConfigError, DataError, BundleError, ValueError) as err:
        _fail(err)
        return
    console.print(f"report: [bold]{report}[/]")


@app.command()
def demo(
    sweep_config: Annotated[Path, typer.Option("--sweep", help="Sweep file.")] = Path("configs/sweeps/demo.yaml"),
    data: Annotated[Path, typer.Option(help="Where the synthetic data set is written.")] = Path("data/synthetic/camelyon17"),
    num_samples: Annotated[int | None, typer.Option(min=1, help="Trials (default: the sweep file's).")] = None,
    train_set: Annotated[
        list[str] | None, typer.Option("--train-set", help="Override for the full training of the best trial (repeatable).")
    ] = None,
    runs: Annotated[Path, typer.Option(help="Folder of runs, sweeps, the model store and Prefect's database.")] = Path("runs"),
) -> None:
    """The whole loop on an embedded default: synthesise data, sweep (Ray Tune), train the best configuration
    (adversarial SupCon + fine-tuning), evaluate it against the serving model and promote it through the gates —
    as a Prefect flow, recorded in a local Prefect database you can browse in the Prefect UI afterwards."""
    import os

    # a stale set (other settings, an older generator, an interrupted write) is rewritten, never trained on
    _ensure_synthetic(data, "camelyon17", _synth_params("camelyon17", 60, 96, 0), force=False, rewrite_stale=True)
    runs = runs.resolve()
    runs.mkdir(parents=True, exist_ok=True)  # Prefect creates PREFECT_HOME (runs/prefect) but not its parents
    os.environ.setdefault("BENTOML_HOME", str(runs / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if not os.environ.get("PREFECT_API_URL"):  # Prefect's temporary server, with its database kept in runs/prefect
        os.environ.setdefault("PREFECT_HOME", str(runs / "prefect"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from robustdx.flows.params import RetrainParams, SweepParams
    from robustdx.flows.pipeline import retrain_flow

    params = RetrainParams(
        sweep=SweepParams(
            config=str(sweep_config),
            num_samples=num_samples,
            overrides=[f"storage_path={runs / 'sweeps'}"],
            run_overrides=[f"data.root={data.resolve()}"],
        ),
        train_overrides=train_set or [],
        output_dir=str(runs / "retrain"),
        reason="make demo",
    )
    try:
        out = retrain_flow(params)
    except (ConfigError, DataError, BundleError) as err:
        _fail(err)
        return
    promotion, trained, sweep_out = out["promotion"], out["train"], out["sweep"]
    _print_metrics(trained["metrics"])
    verdict, _, why = promotion["summary"].partition(": ")
    console.print(f"[{'green' if promotion['promoted'] else 'yellow'}]{verdict}[/] — {why}")
    if not promotion["promoted"]:  # a rerun's candidate can lose to the model an earlier run promoted: say so
        console.print(
            f"[bold yellow]the model trained now is not served:[/] production keeps {promotion.get('production_tag')}, "
            f"promoted by an earlier run (rm -r {runs / 'bentoml'} to start the store afresh)"
        )
    best = ", ".join(f"{k}={v * 255:.0f}/255" if k == "eps" else f"{k}={v:.3g}" for k, v in sweep_out["best_params"].items())
    console.print(
        f"sweep:   {sweep_out['path']} (best {best}; score {sweep_out['best_score']:.4f})\n"
        f"report:  {trained['report']}\n"
        f"bundle:  {trained['bundle']}\n"
        f"serving: {os.environ['BENTOML_HOME']} ({promotion.get('tag') or promotion.get('production_tag')})"
    )
    if os.environ.get("PREFECT_HOME") == str(runs / "prefect"):
        console.print(
            f"Prefect UI: PREFECT_HOME={runs / 'prefect'} {Path(sys.executable).parent / 'prefect'} server start "
            "→ http://127.0.0.1:4200 (flow runs, the sweep table and the promotion decision as artifacts)"
        )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def sweep(ctx: typer.Context) -> None:
    """Ray Tune sweep over ε, PGD steps and learning rate (`robustdx sweep --help` for its options).

    Same as `python -m robustdx.flows.tune ...`, which `ray job submit` sends to a cluster.
    """
    from robustdx.flows.tune.cli import main as sweep_main

    raise typer.Exit(sweep_main(ctx.args, prog="robustdx sweep"))


HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="BentoML home holding the model store (default: $BENTOML_HOME or ~/bentoml).")
]


def _scores_table(ev: Any) -> Table:
    """Candidate vs serving model, from a :class:`robustdx.flows.release.Evaluation`."""
    from robustdx.flows.release import score_rows

    tag = ev.production_tag
    table = Table(title=f"validation at ε = {ev.eps * 255:.1f}/255")
    for col in ("validation metric", "candidate", f"serving ({tag})" if tag else "serving (none)"):
        table.add_column(col)
    for row in score_rows(ev.candidate, ev.production):
        cells = [row["candidate"], row["serving"]]
        table.add_row(row["metric"], *("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells))
    return table


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="Candidate bundle folder (runs/NAME/bundle).")],
    home: HomeOpt = None,
    n_robust: Annotated[int, typer.Option(min=1, help="Validation images attacked with PGD.")] = 256,
    n_attr: Annotated[int, typer.Option(min=0, help="Validation images explained with IG (0: skip).")] = 16,
) -> None:
    """Score a bundle and the serving model side by side on validation (clean, PGD at the serving ε, attribution)."""
    from robustdx.flows.release import EvaluationSettings, evaluate_against_production

    try:
        ev = evaluate_against_production(bundle, home, EvaluationSettings(n_robust=n_robust, n_attr=n_attr))
    except (ConfigError, DataError, BundleError, FileNotFoundError) as err:
        _fail(err)
        return
    console.print(_scores_table(ev))


@app.command()
def promote(
    bundle: Annotated[Path | None, typer.Argument(help="Candidate bundle folder; omit with --rollback.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Serve the previous production model again.")] = False,
    home: HomeOpt = None,
    clean_tolerance: Annotated[float, typer.Option(min=0, max=1, help="Allowed drop in clean val accuracy.")] = 0.01,
    robust_tolerance: Annotated[float, typer.Option(min=0, max=1, help="Allowed drop in robust val accuracy.")] = 0.01,
    attribution_tolerance: Annotated[float, typer.Option(min=0, max=1, help="Allowed drop in attribution score.")] = 0.02,
    n_robust: Annotated[int, typer.Option(min=1, help="Validation images attacked with PGD.")] = 256,
    service_url: Annotated[
        str | None, typer.Option(help="Reload this running service afterwards (needs $ROBUSTDX_ADMIN_TOKEN).")
    ] = None,
) -> None:
    """Promote a bundle into the BentoML store if it is not worse than the serving model (clean, robust and
    attribution gates), or roll production back. Exit code 1 when the gates reject the candidate."""
    from robustdx.core.release.gates import GateConfig
    from robustdx.flows import release

    rejected: str | None = None
    try:
        if rollback:
            if bundle is not None:
                raise ValueError("give either a bundle or --rollback, not both")
            pointer = release.rollback(home)
            console.print(f"[green]rolled back:[/] serving [bold]{pointer.tag}[/] (was {pointer.previous})")
        else:
            if bundle is None:
                raise ValueError("give the bundle folder to promote (or --rollback)")
            gates = GateConfig(
                clean_tolerance=clean_tolerance, robust_tolerance=robust_tolerance, attribution_tolerance=attribution_tolerance
            )
            result = release.promote(bundle, gates, release.EvaluationSettings(n_robust=n_robust), home)
            console.print(_scores_table(result.evaluation))
            if not result.decision.promote:
                rejected = result.decision.summary
            else:
                console.print(f"[green]promoted[/] [bold]{result.tag}[/] (previous: {result.previous})")
        if service_url and rejected is None:
            reply = release.reload_service(service_url)
            console.print(f"service {service_url} serves {reply.get('tag')}")
    except (ConfigError, DataError, BundleError, FileNotFoundError, LookupError, ValueError, RuntimeError, TimeoutError) as err:
        _fail(err)
    if rejected is not None:  # outside the try: typer.Exit is a RuntimeError
        err_console.print(f"[bold yellow]{rejected}[/]")
        raise typer.Exit(1)


@app.command()
def retrain(
    sweep_config: Annotated[Path, typer.Option("--sweep", help="Sweep file.")] = Path("configs/sweeps/demo.yaml"),
    num_samples: Annotated[int | None, typer.Option(min=1, help="Trials (default: the sweep file's).")] = None,
    train_set: Annotated[
        list[str] | None, typer.Option("--train-set", help="Override for the full training of the best trial (repeatable).")
    ] = None,
    home: HomeOpt = None,
    output_dir: Annotated[Path, typer.Option(help="Where the retrained runs go.")] = Path("runs/retrain"),
) -> None:
    """Run the retrain flow once (sweep → train the best → evaluate → gated promotion) through Prefect.

    Uses the Prefect server in $PREFECT_API_URL, else a temporary local one.
    """
    from robustdx.flows.params import RetrainParams, SweepParams
    from robustdx.flows.pipeline import retrain_flow

    params = RetrainParams(
        sweep=SweepParams(config=str(sweep_config), num_samples=num_samples),
        train_overrides=train_set or [],
        output_dir=str(output_dir),
        bentoml_home=str(home) if home else None,
    )
    try:
        out = retrain_flow(params)
    except (ConfigError, DataError, BundleError, FileNotFoundError) as err:
        _fail(err)
        return
    console.print(out["promotion"]["summary"])


@app.command()
def deploy(
    cron: Annotated[str, typer.Option(help="Cron schedule of the nightly retrain (UTC).")] = "0 2 * * *",
    no_cron: Annotated[bool, typer.Option("--no-cron", help="Only the drift-triggered deployment.")] = False,
    cooldown_minutes: Annotated[float, typer.Option(min=0.1, help="Drift events within this window start one retrain.")] = 360,
    sweep_config: Annotated[Path, typer.Option("--sweep", help="Sweep file of the retrains.")] = Path("configs/sweeps/demo.yaml"),
    num_samples: Annotated[int | None, typer.Option(min=1, help="Trials per sweep (default: the sweep file's).")] = None,
    sweep_set: Annotated[
        list[str] | None, typer.Option("--sweep-set", help="Override of the sweep file, e.g. storage_path=... (repeatable).")
    ] = None,
    run_set: Annotated[
        list[str] | None, typer.Option("--run-set", help="Override of every trial's run config, e.g. data.root=... (repeatable).")
    ] = None,
    train_set: Annotated[list[str] | None, typer.Option("--train-set", help="Full-training override (repeatable).")] = None,
    home: HomeOpt = None,
    output_dir: Annotated[Path, typer.Option(help="Where the retrained runs go.")] = Path("runs/retrain"),
    service_url: Annotated[str | None, typer.Option(help="Service to reload after a promotion.")] = None,
) -> None:
    """Serve the retrain deployments (nightly cron + drift trigger) from this process until Ctrl-C.

    Needs a Prefect server ($PREFECT_API_URL, e.g. `prefect server start`); for a worker-based setup see prefect.yaml.
    """
    from datetime import timedelta

    from robustdx.flows.params import RetrainParams, SweepParams
    from robustdx.flows.schedule import build_deployments, serve

    base = RetrainParams(
        sweep=SweepParams(
            config=str(sweep_config), num_samples=num_samples, overrides=sweep_set or [], run_overrides=run_set or []
        ),
        train_overrides=train_set or [],
        output_dir=str(output_dir),
        bentoml_home=str(home) if home else None,
        service_url=service_url,
    )
    try:
        deployments = build_deployments(base, None if no_cron else cron, timedelta(minutes=cooldown_minutes))
    except ValueError as err:
        _fail(err)
        return
    console.print(f"serving {', '.join(d.name for d in deployments)} of flow 'retrain' (Ctrl-C stops)")
    serve(deployments)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
