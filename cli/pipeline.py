"""The whole loop as commands: ``demo`` (everything on an embedded default), ``retrain`` (one run of the
retrain flow) and ``deploy`` (serve the nightly and drift-triggered retrain deployments)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from robustdx.cli.common import HomeOpt, console, fail, print_metrics
from robustdx.cli.training import ensure_synthetic, synth_params
from robustdx.core.errors import BundleError, ConfigError, DataError


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
    ensure_synthetic(data, "camelyon17", synth_params("camelyon17", 60, 96, 0), force=False, rewrite_stale=True)
    runs = runs.resolve()
    runs.mkdir(parents=True, exist_ok=True)  # Prefect creates PREFECT_HOME (runs/prefect) but not its parents
    os.environ.setdefault("BENTOML_HOME", str(runs / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if not os.environ.get("PREFECT_API_URL"):  # Prefect's temporary server, with its database kept in runs/prefect
        os.environ.setdefault("PREFECT_HOME", str(runs / "prefect"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # Prefect waits 20 s for it by default; a first start in a fresh environment (bytecode compiled, database
        # migrated) on 2 busy cores can take longer, and the demo then failed once in a clean clone
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
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
        fail(err)
    from robustdx.flows.tracking import tracking_uri

    promotion, trained, sweep_out = out["promotion"], out["train"], out["sweep"]
    print_metrics(trained["metrics"])
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
    if out.get("snapshot"):
        snap = out["snapshot"]
        console.print(
            f"data:    snapshot {snap['id']} ({snap['base']} base + {snap['feedback']} clinician images) {snap['path']}"
        )
    if promotion.get("bento"):
        bento = promotion["bento"]
        console.print(f"Bento:   {bento} (BENTOML_HOME={os.environ['BENTOML_HOME']} bentoml serve {bento})")
    if trained.get("mlflow_run"):
        uri = tracking_uri()
        console.print(f"MLflow:  run {trained['mlflow_run']} (mlflow ui --backend-store-uri {uri})")
    if os.environ.get("PREFECT_HOME") == str(runs / "prefect"):
        console.print(
            f"Prefect UI: PREFECT_HOME={runs / 'prefect'} {Path(sys.executable).parent / 'prefect'} server start "
            "→ http://127.0.0.1:4200 (flow runs, the sweep table and the promotion decision as artifacts)"
        )


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
        fail(err)
    console.print(out["promotion"]["summary"])


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
        fail(err)
    console.print(f"serving {', '.join(d.name for d in deployments)} of flow 'retrain' (Ctrl-C stops)")
    serve(deployments)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(demo)
    app.command()(retrain)
    app.command()(deploy)
