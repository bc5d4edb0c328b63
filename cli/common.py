"""What every command shares: the consoles, the error exit and the option types used by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)  # no hard line breaks in messages: they are grepped and piped into logs
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML preset, e.g. configs/demo.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set pretrain.epochs=2 (repeatable).")]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="BentoML home holding the model store (default: $BENTOML_HOME or ~/bentoml).")
]


def fail(err: Exception | str, code: int = 2) -> NoReturn:
    """Print ``error: ...`` on stderr and exit with ``code`` (2: bad input or configuration, 1: the work failed)."""
    err_console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code)


def print_metrics(metrics: dict[str, Any]) -> None:
    """The test-split table of a training's metrics (supervised recipes) or its centroid accuracy (SupCon only)."""
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
