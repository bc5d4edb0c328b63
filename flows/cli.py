"""The ``robustdx`` command line (Typer).

Heavy optional packages (Prefect, Ray, BentoML) are imported inside the commands that need them,
so the core commands work with only ``pip install robustdx``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

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
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML preset, e.g. configs/demo.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set pretrain.epochs=2 (repeatable).")]


def _fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


def _train(config: Path, overrides: list[str], dry_run: bool, progress: bool) -> None:
    from robustdx.core.recipes import run_recipe

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


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the data set into.")],
    format_: Annotated[str, typer.Option("--format", "-f", help="On-disk layout: camelyon17 (WILDS) or busi.")] = "camelyon17",
    per_class: Annotated[
        int, typer.Option(min=2, help="camelyon17: patches per class per hospital; busi: images per class.")
    ] = 40,
    size: Annotated[int, typer.Option(min=16, max=512, help="Patch side (camelyon17) or image height (busi), pixels.")] = 96,
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same files).")] = 0,
    force: Annotated[bool, typer.Option(help="Write even if the folder already holds a data set.")] = False,
) -> None:
    """Write a small synthetic data set in the WILDS Camelyon17 or BUSI on-disk format."""
    from robustdx.core.data import synthetic

    if format_ not in ("camelyon17", "busi"):
        _fail(ValueError(f"--format must be 'camelyon17' or 'busi', got {format_!r}"))
    marker = out / ("camelyon17_v1.0/metadata.csv" if format_ == "camelyon17" else "Dataset_BUSI_with_GT")
    if marker.exists() and not force:
        console.print(f"{out} already holds a {format_} data set (use --force to rewrite)")
        return
    with console.status(f"writing synthetic {format_} to {out}"):
        if format_ == "camelyon17":
            folder = synthetic.write_camelyon17(out, per_class=per_class, size=size, seed=seed)
        else:
            folder = synthetic.write_busi(
                out,
                n_benign=per_class,
                n_malignant=per_class,
                n_normal=max(2, per_class // 2),
                height=size,
                width=size * 4 // 3,
                seed=seed,
            )
    console.print(f"wrote {folder}")


@app.command()
def info(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (runs/NAME/bundle).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Verify a model bundle (SHA-256 of every file, architecture) and show what it holds."""
    from robustdx.core.bundle import load_bundle

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
) -> None:
    """Regenerate a paper table: every recipe x seed, clean/robust accuracy and attribution scores, as a report folder.

    Resumable: finished cells are skipped, an interrupted training resumes.
    """
    from robustdx.core.config import load_experiment

    try:
        exp, base = load_experiment(config, set_ or [])
        if dry_run:
            cells = [f"{r}-s{s}" for r in exp.recipes for s in exp.seeds]
            console.print(
                f"{len(cells)} cells on {base.data.dataset} ({base.model.arch} @ {base.data.image_size} px): "
                f"{', '.join(cells)}\nreport: {exp.output_dir / exp.name}"
            )
            return
        from robustdx.core.experiment import run_experiment

        report = run_experiment(exp, base, log=lambda m: console.print(f"[cyan]»[/] {m}"))
    except (ConfigError, DataError, BundleError) as err:
        _fail(err)
        return
    console.print(f"report: [bold]{report}[/]")


@app.command()
def demo(
    config: ConfigOpt = Path("configs/demo.yaml"),
    data: Annotated[Path, typer.Option(help="Where the synthetic data set is written.")] = Path("data/synthetic/camelyon17"),
    set_: SetOpt = None,
) -> None:
    """The whole loop on an embedded default: synthesise data, train adv-SupCon + fine-tune, bundle, report."""
    data_synth(out=data, format_="camelyon17", per_class=60, size=96, seed=0, force=False)
    _train(config, [f"data.root={data}", *(set_ or [])], dry_run=False, progress=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
