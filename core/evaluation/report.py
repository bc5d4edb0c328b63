"""Markdown run reports: what was trained, how training went, clean and robust test results.

Why: a run folder should explain itself to a reader without the code: ``report.md`` beside the bundle
says which recipe, data and attack produced it, how every stage's validation monitor moved, and what
the test split gave (or, for an encoder without a head, its nearest-centroid accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustdx.core.config import RunConfig
from robustdx.core.util import markdown_table

if TYPE_CHECKING:
    from robustdx.core.release.bundle import Bundle
    from robustdx.core.training.checkpoint import StageResult

_STAGE_COLUMNS = ("epoch", "train_loss", "train_adv_loss", "val_acc", "val_auc", "val_centroid_acc", "lr")


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
        cols = [c for c in _STAGE_COLUMNS if any(c in h for h in s.history)]
        lines.append(markdown_table(s.history, cols))
    lines.append("## Test results\n")
    lines += _test_results(cfg, metrics)
    lines.append(
        "\nOne seed; robust accuracy on a seeded random subsample of n test images (correct both clean and "
        "attacked). Repeat over seeds (`robustdx experiment`) before drawing conclusions.\n"
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def _test_results(cfg: RunConfig, metrics: dict[str, Any]) -> list[str]:
    """The test-results section: clean and robust accuracy of a classifier, or an encoder's centroid accuracy."""
    if "robust" not in metrics:
        return [
            f"Encoder only (no classifier head): nearest-centroid accuracy val "
            f"{metrics['val']['centroid_acc']:.4f}, test {metrics['test']['centroid_acc']:.4f}."
        ]
    t, r = metrics["test"], metrics["robust"]
    e = cfg.eval_attack
    robust_col = f"robust acc (PGD-{e.steps}, ε={e.eps * 255:.1f}/255, n={r['n']})"
    row = {
        "accuracy": t["acc"],
        "balanced acc": t["bal_acc"],
        "AUC": t["auc"],
        "worst-group acc": t.get("worst_group_acc", ""),
        robust_col: r["robust_acc"],
    }
    lines = [markdown_table([row], list(row))]
    groups = t.get("group_acc", {})
    if groups:
        lines.append("\nPer-group test accuracy: " + ", ".join(f"group {g}: {v:.3f}" for g, v in groups.items()))
    return lines
