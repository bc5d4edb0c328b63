"""Release commands: ``info`` (verify a bundle), ``evaluate`` (candidate vs serving model), ``promote``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from robustdx.cli.common import HomeOpt, console, err_console, fail, print_metrics
from robustdx.core.errors import BundleError, ConfigError, DataError

BundleArg = Annotated[Path, typer.Argument(help="Bundle folder (runs/NAME/bundle).")]


def info(
    bundle: BundleArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    card: Annotated[bool, typer.Option("--card", help="Print the bundle's model card (Markdown) instead.")] = False,
) -> None:
    """Verify a model bundle (SHA-256 of every file, architecture) and show what it holds."""
    from robustdx.core.evaluation.model_card import model_card_of
    from robustdx.core.release.bundle import load_bundle

    try:
        b = load_bundle(bundle)
    except BundleError as err:
        fail(err)
    if card:
        print(model_card_of(b))
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
        "model_card": b.model_card is not None,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(f"[green]verified[/] bundle {b.path} — version [bold]{b.version}[/]")
    console.print(
        f"{summary['recipe']} on {summary['dataset']} ({summary['arch']} @ {summary['image_size']} px), "
        f"created {summary['created']}"
    )
    print_metrics(b.metrics)


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
        fail(err)
    console.print(_scores_table(ev))


def _rollback(home: Path | None, dry_run: bool) -> None:
    from robustdx.core.release.pointer import read_production
    from robustdx.flows import release

    if dry_run:
        pointer = read_production(home)
        if pointer is None or not pointer.previous:
            raise LookupError("nothing to roll back to: no production model, or no previous one")
        console.print(f"[dim]dry run:[/] would serve [bold]{pointer.previous}[/] again (now {pointer.tag}); nothing written")
        return
    pointer = release.rollback(home)
    console.print(f"[green]rolled back:[/] serving [bold]{pointer.tag}[/] (was {pointer.previous})")


def _bento(tag: str, home: Path | None) -> None:
    """Build the promoted model's Bento; a failed build is reported, the promotion stands."""
    from robustdx.flows.bento import BentoBuildError, build_bento

    with console.status(f"building the Bento of {tag} (bentoml build)"):
        try:
            built = build_bento(tag, home)
        except BentoBuildError as err:
            err_console.print(f"[yellow]promoted, but the Bento was not built:[/] {err}")
            return
    console.print(f"Bento [bold]{built}[/]: bentoml serve {built}  |  bentoml containerize {built}")


def promote(
    bundle: Annotated[Path | None, typer.Argument(help="Candidate bundle folder; omit with --rollback.")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="Serve the previous production model again.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Evaluate and decide as a promotion would; write nothing (store, pointer, audit log)."),
    ] = False,
    home: HomeOpt = None,
    clean_tolerance: Annotated[float, typer.Option(min=0, max=1, help="Allowed drop in clean val accuracy.")] = 0.01,
    robust_tolerance: Annotated[float, typer.Option(min=0, max=1, help="Allowed drop in robust val accuracy.")] = 0.01,
    attribution_tolerance: Annotated[float, typer.Option(min=0, max=1, help="Allowed drop in attribution score.")] = 0.02,
    n_robust: Annotated[int, typer.Option(min=1, help="Validation images attacked with PGD.")] = 256,
    service_url: Annotated[
        str | None, typer.Option(help="Reload this running service afterwards (needs $ROBUSTDX_ADMIN_TOKEN).")
    ] = None,
    bento: Annotated[
        bool, typer.Option("--bento/--no-bento", help="Build a Bento of the promoted model (robustdx:<version>).")
    ] = True,
) -> None:
    """Promote a bundle into the BentoML store if it is not worse than the serving model (clean, robust and
    attribution gates), or roll production back. Exit code 1 when the gates reject the candidate."""
    from robustdx.core.release.gates import GateConfig
    from robustdx.flows import release

    rejected: str | None = None
    try:
        if bundle is not None and rollback:
            raise ValueError("give either a bundle or --rollback, not both")
        if rollback:
            _rollback(home, dry_run)
        else:
            if bundle is None:
                raise ValueError("give the bundle folder to promote (or --rollback)")
            gates = GateConfig(
                clean_tolerance=clean_tolerance, robust_tolerance=robust_tolerance, attribution_tolerance=attribution_tolerance
            )
            result = release.promote(bundle, gates, release.EvaluationSettings(n_robust=n_robust), home, dry_run=dry_run)
            console.print(_scores_table(result.evaluation))
            if not result.decision.promote:
                rejected = result.decision.summary
            elif dry_run:
                console.print(f"[dim]dry run:[/] the gates pass; would promote {bundle} (serving now: {result.previous})")
            else:
                console.print(f"[green]promoted[/] [bold]{result.tag}[/] (previous: {result.previous})")
                if bento:
                    _bento(result.tag, home)
        if service_url and rejected is None and not dry_run:
            reply = release.reload_service(service_url)
            console.print(f"service {service_url} serves {reply.get('tag')}")
    except (ConfigError, DataError, BundleError, FileNotFoundError, LookupError, ValueError, RuntimeError, TimeoutError) as err:
        fail(err)
    if rejected is not None:  # outside the try: typer.Exit is a RuntimeError
        err_console.print(f"[bold yellow]{rejected}[/]")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(info)
    app.command()(evaluate)
    app.command()(promote)
