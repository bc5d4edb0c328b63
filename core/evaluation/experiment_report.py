"""The report of a paper table: findings first, then every number with its interval, the flags, the plots.

Layout of ``reports/NAME/``: ``report.md``; ``results.csv`` (one row per cell); ``summary.csv`` (one row per
recipe); ``comparisons.csv`` (every paired test, Holm-adjusted); ``accuracy_vs_eps.png``,
``training_curves.png`` (validation curves of every stage) and ``ig_grid.png`` (the paper's Fig. 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustdx.core.config import ExperimentConfig, RunConfig
from robustdx.core.data import build_splits
from robustdx.core.evaluation.findings import comparisons, findings_markdown, seed_outcomes
from robustdx.core.evaluation.statistics import proportion, t_interval
from robustdx.core.explain.plots import GridConfig, agg_figure, save_attack_grid
from robustdx.core.util import markdown_table, write_csv


def _budget(cell: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((b for b in cell["robustness"]["budgets"] if b["eps_label"] == label), None)


def _fmt_p(p: dict[str, Any] | None) -> str:
    """``0.523 [0.492, 0.554]`` for a proportion record."""
    if not p or p.get("value") is None:
        return "—"
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]"


def _fmt_ci(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return "—"
    lo, hi = d["ci"]
    return f"{d['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def headline_labels(cells: list[dict[str, Any]]) -> list[str]:
    return [b["eps_label"] for b in cells[0]["robustness"]["budgets"] if b["role"] == "headline"]


def cell_row(cell: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a cell (the per-cell table and results.csv)."""
    t = cell["test"]
    row: dict[str, Any] = {
        "cell": cell["name"], "recipe": cell["recipe"], "seed": cell["seed"], "fold": cell["fold"], "n": t["n"],
        "clean_acc": _fmt_p(t["acc"]), "bal_acc": _fmt_ci(t["bal_acc"]), "auc": _fmt_ci(t.get("auc")),
        "train_seconds": round(cell["train_seconds"]), "eval_seconds": round(cell["eval_seconds"]),
    }  # fmt: skip
    for b in cell["robustness"]["budgets"]:
        row[f"robust@{b['eps_label']}"] = _fmt_p(b["robust_acc"])
    train = next((b for b in cell["robustness"]["budgets"] if "square_n" in b and b["role"] != "sanity"), None)  # the training ε
    if train is not None and "apgd_n" in train:
        row["APGD breaks beyond PGD (train ε)"] = f"{train['apgd_only_broken']} of {train['apgd_n']}"
        row["Square breaks beyond both"] = f"{train['square_only_broken']} (first {train['square_n']})"
    row["flags"] = len(cell["flags"])
    return row


def _pooled(cells: list[dict[str, Any]], pick: Any) -> dict[str, Any] | None:
    """Sum of the correct counts and items over the recipe's cells (pooled over folds: every image once;
    over seeds: the item-run pairs), with the Wilson interval of the pooled share."""
    ks = [pick(c) for c in cells]
    if any(k is None for k in ks):
        return None
    k, n = sum(x[0] for x in ks), sum(x[1] for x in ks)
    return proportion(k, n).to_json() if n else None


def summary_rows(cells: list[dict[str, Any]], recipes: list[str]) -> list[dict[str, Any]]:
    """One row per recipe: pooled clean and robust accuracy (Wilson), per-class robust recall, the spread over runs."""
    rows = []
    labels = headline_labels(cells)
    for recipe in recipes:
        mine = [c for c in cells if c["recipe"] == recipe]
        if not mine:
            continue
        row: dict[str, Any] = {"recipe": recipe, "runs": len(mine)}
        row["clean_acc"] = _fmt_p(_pooled(mine, lambda c: (c["test"]["acc"]["k"], c["test"]["acc"]["n"])))
        row["bal_acc (mean of runs)"] = f"{np.mean([c['test']['bal_acc']['value'] for c in mine]):.3f}"
        row["not better than chance"] = sum(not c["test"]["better_than_chance"] for c in mine)
        for label in labels:
            pooled = _pooled(mine, lambda c, lb=label: _k_n(_budget(c, lb)))
            row[f"robust@{label}"] = _fmt_p(pooled)
            values = [_budget(c, label)["robust_acc"]["value"] for c in mine]
            row[f"robust@{label} sd over runs"] = f"{np.std(values, ddof=1):.3f}" if len(values) > 1 else "— (one run)"
            row[f"robust@{label} over seeds (t 95 %)"] = _over_seeds(mine, recipe, label)
            for cls in range(len(mine[0]["test"]["recall"])):
                row[f"robust recall class {cls} @{label}"] = _fmt_p(_pooled(mine, lambda c, lb=label, k=cls: _recall(c, lb, k)))
        row["flagged runs"] = sum(bool(c["flags"]) for c in mine)
        rows.append(row)
    return rows


def _over_seeds(cells: list[dict[str, Any]], recipe: str, label: str) -> str:
    """The mean of a recipe's per-seed robust accuracies (folds pooled within a seed) with the 95 % t interval of
    that mean: the uncertainty training seeds add, which the pooled Wilson interval (items only) leaves out.
    Only seeds that scored every item of the recipe count (a seed with unfinished folds would be a different
    mix of items)."""
    per_seed = seed_outcomes(cells, recipe, label)
    everything = set().union(*(set(v) for v in per_seed.values())) if per_seed else set()
    values = [float(np.mean(list(v.values()))) for v in per_seed.values() if set(v) == everything]
    if len(values) < 2:
        return "— (one seed)"
    lo, hi = t_interval(values)  # an accuracy lies in [0, 1]: so may its interval
    return f"{np.mean(values):.3f} [{max(lo, 0.0):.3f}, {min(hi, 1.0):.3f}]"


def _recall(cell: dict[str, Any], label: str, cls: int) -> tuple[int, int] | None:
    rec = _budget(cell, label)
    return _k_n(rec["robust_recall"][cls]) if rec else None


def _k_n(rec: dict[str, Any] | None) -> tuple[int, int] | None:
    if rec is None:
        return None
    p = rec.get("robust_acc", rec)
    return (int(p["k"]), int(p["n"])) if p and p.get("n") else None


def attribution_rows(cells: list[dict[str, Any]], recipes: list[str]) -> list[dict[str, Any]]:
    """Attribution scores per recipe (mean over runs), each beside its controls."""
    rows = []
    for recipe in recipes:
        mine = [c["attribution"] for c in cells if c["recipe"] == recipe]
        if not mine:
            continue

        def mean(get: Any, runs: list[dict[str, Any]] = mine, fmt: str = ".3f") -> str:
            vals = [v for a in runs if (v := get(a)) is not None]
            return format(float(np.mean(vals)), fmt) if vals else "—"

        rows.append({
            "recipe": recipe, "images/run": mine[0]["n"], "region": mine[0]["region"],
            "region area (chance)": mean(lambda a: a["region_area"]),
            "IG mass in region": mean(lambda a: a["ig"]["region_mass"]),
            "gradient mass": mean(lambda a: a["gradient"]["region_mass"]),
            "randomised-model IG mass": mean(lambda a: a["randomised_model_ig"]["region_mass"]),
            "IG mass, attacked input": mean(lambda a: a["ig_attacked"]["region_mass"]),
            "IG pointing game": mean(lambda a: a["ig"]["pointing_game"]["value"]),
            "randomised pointing game": mean(lambda a: a["randomised_model_ig"]["pointing_game"]["value"]),
            "deletion − random (lower better)": mean(lambda a: a["deletion_insertion"]["deletion_diff"]),
            "insertion − random (higher better)": mean(lambda a: a["deletion_insertion"]["insertion_diff"]),
            "Spearman vs randomised model": mean(lambda a: (a.get("cascading") or {}).get("full_randomisation_spearman")),
            "infidelity IG / gradient": f"{mean(lambda a: (a.get('infidelity') or {}).get('ig'), fmt='.3g')} / "
            f"{mean(lambda a: (a.get('infidelity') or {}).get('gradient'), fmt='.3g')}",
            "IG complete to 1 %": mean(lambda a: a["converged"]["value"]),
        })  # fmt: skip
    return rows


SPEARMAN_LIMIT = 0.5
"""Mean Spearman correlation with a fully randomised model's maps above which a regime's maps are said not to
pass the model-randomisation check (Adebayo et al. 2018 read maps that stay this similar as not explaining
the learned weights)."""


def attribution_caveats(cells: list[dict[str, Any]], recipes: list[str]) -> list[str]:
    """What each regime's attribution scores speak against (for "What they do not support"): maps that stay
    similar to a randomised model's, and maps no more on the label region than a randomised model's."""
    out = []
    for recipe in recipes:
        mine = [c["attribution"] for c in cells if c["recipe"] == recipe]
        if not mine:
            continue
        rho = [v for a in mine if (v := (a.get("cascading") or {}).get("full_randomisation_spearman")) is not None]
        if rho and float(np.mean(rho)) > SPEARMAN_LIMIT:
            out.append(
                f"That `{recipe}`'s IG maps show what the model learned: they correlate with a randomised model's maps "
                f"(mean Spearman {np.mean(rho):.2f} > {SPEARMAN_LIMIT}; the model-randomisation check, Adebayo et al. 2018)."
            )
        ig = float(np.mean([a["ig"]["region_mass"] for a in mine]))
        rnd = float(np.mean([a["randomised_model_ig"]["region_mass"] for a in mine]))
        if ig <= rnd:
            out.append(
                f"That `{recipe}`'s IG points at the {mine[0]['region']} region: its attribution mass there ({ig:.3f}) is "
                f"no higher than a randomised model's ({rnd:.3f})."
            )
    return out


def plot_accuracy_vs_eps(cells: list[dict[str, Any]], recipes: list[str], path: Path) -> Path:
    """Robust accuracy (worst case over attacks) against ε on the grid items, pooled over runs, with Wilson bands."""
    fig = agg_figure(6.4, 4.2)
    ax = fig.subplots()
    for recipe in recipes:
        mine = [c for c in cells if c["recipe"] == recipe]
        if not mine:
            continue
        points = []
        for b in sorted(mine[0]["robustness"]["budgets"], key=lambda b: b["eps"]):
            pooled = _pooled(mine, lambda c, lb=b["eps_label"]: _k_n(_budget(c, lb)))
            if pooled:
                points.append((b["eps"] * 255, pooled["value"], pooled["lo"], pooled["hi"]))
        e, v, lo, hi = map(np.array, zip(*points, strict=True))
        ax.plot(e, v, marker="o", label=recipe)
        ax.fill_between(e, lo, hi, alpha=0.15)
    ax.set(xscale="symlog", xlabel="ε (×1/255, pixel units)", ylabel="robust accuracy (worst case over attacks)", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_training_curves(cells: list[dict[str, Any]], recipes: list[str], path: Path) -> Path:
    """Validation curves of every stage of every recipe (all runs, thin lines)."""
    stages = max(len(c["history"]) for c in cells)
    fig = agg_figure(5 * stages, 3.6)
    axes = fig.subplots(1, stages, squeeze=False)[0]
    colours = dict(zip(recipes, [f"C{i}" for i in range(len(recipes))], strict=False))
    for c in cells:
        for i, stage in enumerate(c["history"]):
            h = stage["history"]
            first = c is next(x for x in cells if x["recipe"] == c["recipe"])
            label = f"{c['recipe']} ({stage['regime']})" if first else None
            values = [e[stage["monitor"]] for e in h]
            axes[i].plot([e["epoch"] for e in h], values, color=colours[c["recipe"]], lw=0.8, label=label)
    for i, ax in enumerate(axes):
        ax.set(xlabel="epoch", ylabel="validation monitor", title=f"stage {i + 1}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def ig_grid(exp: ExperimentConfig, base: RunConfig, folder: Path, cells: list[dict[str, Any]]) -> Path | None:
    """The paper's Fig. 1 for the first cell of every recipe (of those whose first cell is finished and whose bundle
    is still on disk; None if none is)."""
    from robustdx.core.evaluation.experiment import attack_grid_models, cell_config

    finished = {c["name"] for c in cells}
    fold = 0 if exp.folds else None
    firsts = {r: cell_config(base, exp, r, exp.seeds[0], fold) for r in exp.recipes}
    # a cell's record can outlive its run folder (records are kept, bundles are not): plot those still here
    done = [r for r, cfg in firsts.items() if cfg.name in finished and (cfg.run_dir / "bundle").exists()]
    if not done:
        return None
    models = attack_grid_models(exp, base, done)
    cfg = cell_config(base, exp, exp.recipes[0], exp.seeds[0], 0 if exp.folds else None)
    test = build_splits(cfg.data).test
    labels = np.asarray(test.labels)
    picks = [int(np.flatnonzero(labels == c)[k]) for k in range(exp.attribution.n_grid) for c in (1, 0)][: exp.attribution.n_grid]
    items = [test[i] for i in picks]
    images, ys = torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
    grid = GridConfig(attack=base.attack, baseline=exp.attribution.baseline, n_steps=exp.attribution.n_steps)
    return save_attack_grid(models, images, ys, folder / "ig_grid.png", grid)


def _header(exp: ExperimentConfig, base: RunConfig, cells: list[dict[str, Any]]) -> list[str]:
    from robustdx.core.evaluation.experiment import cell_name, cells_of

    r = exp.robustness
    epochs = {c["recipe"]: c["epochs"] for c in cells}
    split = f"stratified {exp.folds}-fold cross-validation (every image tested once)" if exp.folds else "the fixed test split"
    planned = [cell_name(*c) for c in cells_of(exp)]
    missing = [n for n in planned if n not in {c["name"] for c in cells}]
    partial = (
        [f"**Partial report: {len(planned) - len(missing)} of {len(planned)} cells finished** (missing: {', '.join(missing)}); "
         "everything below covers the finished cells only.\n"] if missing else []
    )  # fmt: skip
    return [
        f"# Experiment `{exp.name}`\n",
        *partial,
        f"Data `{base.data.dataset}` at {base.data.image_size} px, encoder `{base.model.arch}`, {split}; seeds {exp.seeds}. "
        f"Training attack PGD-{base.attack.steps} at ε = {base.attack.eps * 255:g}/255. "
        + (f"Equal budgets: {exp.budget.passes} optimiser passes over the training split for every regime (epochs per stage: "
           + "; ".join(f"{k}: {v}" for k, v in epochs.items()) + ")." if exp.budget else "Epochs as in the base config.")
        + f" Checkpoints selected on `{base.monitor}`.\n",
        f"Robustness: per item the worst case over PGD-{r.pgd_steps} ({r.pgd_restarts} restarts, every iterate checked), "
        f"APGD-{r.apgd_loss.upper()} ({r.apgd_steps} steps) on the items PGD left standing, and Square "
        f"({r.square_queries} queries) on those both left standing at the training ε among the first {r.n_square} items"
        + (" and at the sanity budgets" if r.square_sanity else "")
        + f"; headline budgets on every evaluation item, the ε grid and the sanity budgets on the first {r.n_grid}. "
        "The same items, in the same order, for every cell. Intervals: Wilson 95 % for "
        "accuracies and recalls, class-stratified bootstrap for balanced accuracy and AUC.\n",
    ]  # fmt: skip


def write_experiment_report(exp: ExperimentConfig, base: RunConfig, cells: list[dict[str, Any]], folder: Path) -> Path:
    """``report.md`` and its tables and plots for the finished ``cells``."""
    recipes = [str(r) for r in exp.recipes if any(c["recipe"] == str(r) for c in cells)]
    found = comparisons(cells, recipes, ["clean", *headline_labels(cells)])
    notes = []
    chance = [c["name"] for c in cells if not c["test"]["better_than_chance"]]
    if chance:
        notes.append(f"Not better than chance (balanced-accuracy interval contains 0.5): {', '.join(chance)}.")
    single = [r for r in recipes if len({c["seed"] for c in cells if c["recipe"] == r}) < 2]
    if single:
        per = " (one model per fold)" if exp.folds else ""
        notes.append(
            f"One training seed of {', '.join(single)}{per}: a comparison involving them says that these trained models "
            "differ on these items, not that the regimes would differ on another training seed (training variance is "
            "not measured yet)."
        )
    rows, summary, attr = [cell_row(c) for c in cells], summary_rows(cells, recipes), attribution_rows(cells, recipes)
    write_csv(folder / "results.csv", rows)
    write_csv(folder / "summary.csv", summary)
    write_csv(folder / "comparisons.csv", [{**c.__dict__, "seed_ci": c.seed_ci, "across_seeds": c.across_seeds} for c in found])
    plots = [plot_accuracy_vs_eps(cells, recipes, folder / "accuracy_vs_eps.png"),
             plot_training_curves(cells, recipes, folder / "training_curves.png"), ig_grid(exp, base, folder, cells)]  # fmt: skip
    lines = [
        *_header(exp, base, cells),
        findings_markdown(found, {c["name"]: c["flags"] for c in cells}, notes, attribution_caveats(cells, recipes)),
        "## Per recipe (pooled over runs; Wilson 95 % intervals)\n",
        markdown_table(summary, list(summary[0])),
        "\n## Attributions (mean over runs; each beside its controls)\n",
        markdown_table(attr, list(attr[0])),
        "\nChance for the mass in the region is the region's area. A faithful map beats the plain gradient and the "
        "randomised model, and its Spearman correlation with the randomised model's map is low (Adebayo et al. 2018).\n",
        "## Per cell\n",
        markdown_table(rows, list(rows[0])),
        "\n## Plots\n",
        *[f"![{p.stem}]({p.name})" for p in plots if p is not None],
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"
