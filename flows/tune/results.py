"""A sweep's results: one row per trial, the best trial, the score plot and the terminal table.

Why its own module: the rows are computed from what Tune recorded (every report of every worker
session of a trial), and they are read by the driver (``trials.csv``, ``best.yaml``), the command
line (the table), the Prefect sweep flow (a table artifact) and the ASHA benchmark; none of this
needs Ray running. ``trials.csv`` is written with :func:`robustdx.core.util.write_csv`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustdx.core.config import RunConfig
from robustdx.core.config.sweep import Objective, SweepConfig
from robustdx.flows.tune.space import total_epochs

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


def grid_rows(grid: Any, sweep: SweepConfig, base: RunConfig) -> list[dict[str, Any]]:
    """One :func:`trial_row` per trial of a Tune ``ResultGrid``, sorted by trial id."""
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
