"""Markdown run reports: what was trained, how training went, clean and robust test results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustdx.core.config import RunConfig

if TYPE_CHECKING:
    from robustdx.core.release.bundle import Bundle
    from robustdx.core.training.trainer import StageResult


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns`` (missing cells left blank)."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def write_report(path: Path, cfg: RunConfig, stages: list[StageResult], metrics: dict[str, Any], bundle: Bundle) -> Path:
    """Write ``report.md`` for a finished run and return its path."""
    a = cfg.attack
    lines = [
        f"# robustdx run `{cfg.name}`\n",
        f"- recipe: **{cfg.recipe}**, seed {cfg.seed}, encoder `{cfg.model.arch}` at {cfg.data.image_size} px",
        f"- data: `{cfg.data.dataset}` from `{cfg.data.root}`",
        f"- training attack: {a.name}, ε = {a.eps * 255:.2f}/255 ({a.space}), {a.steps} steps, step {a.alpha * 255:.2f}/255",
        f"- bundle: `{bundle.path}` (version `{bundle.version}`)\n",
    ]
    for s in stages:
        lines.append(f"## Stage `{s.regime}` — best {s.monitor} {s.best_score:.4f} at epoch {s.best_epoch} ({s.seconds:.1f} s)\n")
        cols = [
            c
            for c in ("epoch", "train_loss", "train_adv_loss", "val_acc", "val_auc", "val_centroid_acc", "lr")
            if any(c in h for h in s.history)
        ]
        lines.append(markdown_table(s.history, cols))
    lines.append("## Test results\n")
    if "robust" in metrics:
        t, r = metrics["test"], metrics["robust"]
        e = cfg.eval_attack
        lines.append(
            markdown_table(
                [
                    {
                        "accuracy": t["acc"],
                        "balanced acc": t["bal_acc"],
                        "AUC": t["auc"],
                        "worst-group acc": t.get("worst_group_acc", ""),
                        f"robust acc (PGD-{e.steps}, ε={e.eps * 255:.1f}/255, n={r['n']})": r["robust_acc"],
                    }
                ],
                [
                    "accuracy",
                    "balanced acc",
                    "AUC",
                    "worst-group acc",
                    f"robust acc (PGD-{e.steps}, ε={e.eps * 255:.1f}/255, n={r['n']})",
                ],
            )
        )
        groups = t.get("group_acc", {})
        if groups:
            lines.append("\nPer-group test accuracy: " + ", ".join(f"group {g}: {v:.3f}" for g, v in groups.items()))
    else:
        lines.append(
            f"Encoder only (no classifier head): nearest-centroid accuracy val "
            f"{metrics['val']['centroid_acc']:.4f}, test {metrics['test']['centroid_acc']:.4f}."
        )
    lines.append(
        "\nOne seed; robust accuracy on a seeded random subsample of n test images (correct both clean and "
        "attacked). Repeat over seeds (`robustdx experiment`) before drawing conclusions.\n"
    )
    path.write_text("\n".join(lines) + "\n")
    return path
