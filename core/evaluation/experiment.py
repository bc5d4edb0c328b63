"""``robustdx experiment``: regenerate a paper table — every recipe x seed, clean, robust and attributions.

Why it exists: the paper reports one run per cell, clean accuracy only and anecdotal saliency maps
(SCIENCE.md, weaknesses 3, 5 and 7). A cell here is one recipe trained with one seed through the
same :func:`run_recipe` the CLI, the Prefect flows and the Ray Tune trainable use, then scored on the
test split:

* clean: accuracy, balanced accuracy, AUC, ECE, worst-group accuracy, bootstrap 95% CIs;
* robust: PGD (``pgd_steps``, ``pgd_restarts``) accuracy over the pixel-unit ε grid, a
  gradient-free Square attack at the grid's largest ε, and gradient-masking flags;
* attributions (Integrated Gradients, clean and on PGD-attacked inputs): mass inside the label
  region (BUSI lesion masks; the PCam/Camelyon centre 32×32), pointing game, deletion/insertion
  AUC, infidelity/sensitivity, and the model-randomisation sanity check.

Every cell is written to ``cells/RECIPE-sSEED.json`` as soon as it is done, so a rerun skips
finished cells (and ``run_recipe`` resumes an interrupted training). The report folder holds
``report.md``, ``results.csv`` (one row per cell), ``summary.csv`` (mean ± std per recipe) and PNG
plots: training curves, accuracy-vs-ε, and the clean-vs-attacked IG grid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from robustdx.core.config import AttackConfig, ExperimentConfig, Recipe, RunConfig
from robustdx.core.data import Splits, build_splits
from robustdx.core.evaluation import metrics as ev
from robustdx.core.evaluation.robustness import EvalConfig, gradient_masking_flags, robustness_curve, square_robust_accuracy
from robustdx.core.evaluation.scoring import region_batch
from robustdx.core.explain import quality as attr_metrics
from robustdx.core.explain.ig import SCORING_STEPS, integrated_gradients
from robustdx.core.explain.maps import attribution_map
from robustdx.core.explain.plots import GridConfig, agg_figure, save_attack_grid
from robustdx.core.training.recipes import has_classifier, run_recipe
from robustdx.core.util import atomic_write_bytes, markdown_table, resolve_device, write_csv

Log = Callable[[str], None]


def cell_config(base: RunConfig, exp: ExperimentConfig, recipe: Recipe, seed: int) -> RunConfig:
    """The run config of one cell: the base with this recipe, seed, name and output folder."""
    return base.model_copy(
        update={"recipe": recipe, "seed": seed, "name": f"{recipe}-s{seed}", "output_dir": exp.output_dir / exp.name / "runs"}
    )


def _score_attributions(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, exp: ExperimentConfig
) -> dict[str, float]:
    a = exp.attribution
    ig = integrated_gradients(model, x, target=target, baseline=a.baseline, n_steps=SCORING_STEPS)
    amap = attribution_map(ig.attributions)
    has_region = masks.flatten(1).any(1)  # BUSI "normal" images have no lesion
    out = {"ig_rel_error_max": float(ig.rel_error.max())}
    if has_region.any():
        out["region_mass"] = float(attr_metrics.mass_in_region(amap[has_region], masks[has_region]).mean())
        out["pointing_game"] = float(attr_metrics.pointing_game(amap[has_region], masks[has_region]).float().mean())
        out["region_area"] = float(masks[has_region].float().mean())
    # black/grey patches are OOD: delete into a blurred copy; curves are relative to p(x), beside random orders
    di = attr_metrics.deletion_insertion_auc(model, x, amap, target, attr_metrics.DeletionConfig(baseline="blur"))
    for kind in ("deletion", "insertion"):
        out[f"{kind}_auc"] = float(di[kind].mean())
        out[f"{kind}_random_auc"] = float(di[f"{kind}_random"].mean())
        out[f"{kind}_diff"] = float(di[f"{kind}_diff"].mean())
    return out


def _ig_fn(exp: ExperimentConfig, n_steps: int = SCORING_STEPS) -> Callable[..., torch.Tensor]:
    """IG on the scoring rule (``SCORING_STEPS`` Gauss-Legendre points) for the perturbation-based scores
    (sensitivity, infidelity, randomisation): the same fixed grid for every input and model."""

    def explain(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return integrated_gradients(model, inputs, target=target, baseline=exp.attribution.baseline, n_steps=n_steps).attributions

    return explain


def evaluate_cell(
    model: torch.nn.Module, cfg: RunConfig, exp: ExperimentConfig, splits: Splits, device: torch.device
) -> dict[str, Any]:
    """Clean, robust and attribution scores of one trained model on the test split."""
    model.to(device).eval()
    probs, labels, groups = ev.predict(model, DataLoader(splits.test, batch_size=cfg.data.eval_batch_size), device)
    clean = ev.classification_metrics(probs, labels, groups)
    pred = probs.argmax(1)
    clean["acc_ci"] = ev.bootstrap_ci(lambda idx: float((pred[idx] == labels[idx]).mean()), len(labels), exp.n_boot, cfg.seed)
    robust = _robustness(model, cfg, exp, splits, device)
    return {"test": clean, **robust, "attribution": _attributions(model, cfg, exp, splits, device)}


def _robustness(
    model: torch.nn.Module, cfg: RunConfig, exp: ExperimentConfig, splits: Splits, device: torch.device
) -> dict[str, Any]:
    """``robustness`` (PGD over the ε grid), ``square`` (at the grid's largest ε; None when
    ``exp.n_square`` is 0) and the gradient-masking ``flags`` on the test split."""
    pgd = EvalConfig(
        eps_grid=exp.eps_grid,
        steps=exp.pgd_steps,
        restarts=exp.pgd_restarts,
        max_n=exp.n_robust,
        batch_size=cfg.data.eval_batch_size,
        seed=cfg.seed,
    )
    curve = robustness_curve(model, splits.test, pgd, device=device)
    square = None
    if exp.n_square:  # Square keeps EvalConfig's batch size (its batch k is seeded seed + k)
        budget = EvalConfig(square_n=exp.n_square, square_queries=exp.square_queries, seed=cfg.seed)
        square = square_robust_accuracy(model, splits.test, max(exp.eps_grid), budget, device=device)
    flags = gradient_masking_flags(curve, [square] if square else [])
    return {"robustness": curve, "square": square, "flags": flags}


def _attributions(
    model: torch.nn.Module, cfg: RunConfig, exp: ExperimentConfig, splits: Splits, device: torch.device
) -> dict[str, Any]:
    """IG scores on the first test images, clean and PGD-attacked, and the sanity / infidelity checks."""
    a = exp.attribution
    x, y, masks, region = region_batch(splits, cfg, a.n_images)
    x, y, masks = x.to(device), y.to(device), masks.to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    x_adv = _attack(model, x, y, cfg.attack)
    attributions = {
        "region": region,
        "clean": _score_attributions(model, x, target, masks, exp),
        "attacked": _score_attributions(model, x_adv, target, masks, exp),
    }
    explain = _ig_fn(exp)
    if a.n_sanity:
        sanity = attr_metrics.randomisation_check(model, x[: a.n_sanity], explain, target[: a.n_sanity], seed=cfg.seed + 7919)
        attributions["randomisation_spearman"] = float(sanity["mean_spearman"])
    if a.n_infidelity:
        inf = attr_metrics.infidelity_and_sensitivity(
            model, x[: a.n_infidelity], explain, target[: a.n_infidelity], baseline=a.baseline
        )
        attributions["infidelity"] = float(inf["infidelity"].mean())
        attributions["sensitivity_max"] = float(inf["sensitivity_max"].mean())
    return attributions


def _attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    from robustdx.core.attacks import attack_ce

    return attack_ce(model, x, y, cfg)


def run_cell(exp: ExperimentConfig, base: RunConfig, recipe: Recipe, seed: int, log: Log) -> dict[str, Any]:
    """Train (or resume) and score one cell; cached in ``cells/RECIPE-sSEED.json``."""
    out = exp.output_dir / exp.name / "cells" / f"{recipe}-s{seed}.json"
    if out.is_file():
        log(f"{recipe} seed {seed}: done before, skipped")
        return json.loads(out.read_text())
    cfg = cell_config(base, exp, recipe, seed)
    if not has_classifier(recipe):
        raise ValueError(f"recipe {recipe!r} has no classifier head; experiments need one of the *_ft / ce recipes")
    log(f"{recipe} seed {seed}: training")
    t0 = time.perf_counter()
    result = run_recipe(cfg, log=lambda m: log(f"  {m}"))
    log(
        f"{recipe} seed {seed}: evaluating (PGD-{exp.pgd_steps} x{exp.pgd_restarts} over {len(exp.eps_grid)} ε, "
        f"Square, attributions)"
    )
    device = resolve_device(cfg.device)
    scores = evaluate_cell(result.model, cfg, exp, build_splits(cfg.data), device)
    cell = {
        "recipe": str(recipe),
        "seed": seed,
        "train_seconds": sum(s.seconds for s in result.stages),
        "wall_seconds": time.perf_counter() - t0,
        "bundle": str(result.bundle),
        "history": [{"regime": s.regime, "monitor": s.monitor, "history": s.history} for s in result.stages],
        **scores,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda p: p.write_text(json.dumps(cell, indent=2, default=float)))
    return cell


# ---------------------------------------------------------------------------------------------
# aggregation and report
# ---------------------------------------------------------------------------------------------
def cell_row(cell: dict[str, Any]) -> dict[str, Any]:
    """One flat CSV row of a cell."""
    t = cell["test"]
    row: dict[str, Any] = {
        "recipe": cell["recipe"],
        "seed": cell["seed"],
        "test_acc": t["acc"],
        "test_acc_lo": t["acc_ci"][0],
        "test_acc_hi": t["acc_ci"][1],
        "test_auc": t["auc"],
        "test_bal_acc": t["bal_acc"],
        "test_ece": t["ece"],
        "worst_group_acc": t.get("worst_group_acc", float("nan")),
        "train_seconds": cell["train_seconds"],
    }
    for point in cell["robustness"]:
        row[f"robust_acc@{point['eps'] * 255:g}/255"] = point["robust_acc"]
    if cell.get("square"):
        row["square_acc"] = cell["square"]["robust_acc"]
    for kind in ("clean", "attacked"):
        for k, v in cell["attribution"][kind].items():
            row[f"ig_{kind}_{k}"] = v
    for k in ("randomisation_spearman", "infidelity", "sensitivity_max"):
        if k in cell["attribution"]:
            row[k] = cell["attribution"][k]
    row["flags"] = "; ".join(cell["flags"])
    return row


def summarise(rows: list[dict[str, Any]], recipes: list[str]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every numeric column, per recipe (in the order given)."""
    summary = []
    for recipe in recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        if not mine:
            continue
        out: dict[str, Any] = {"recipe": recipe, "seeds": len(mine)}
        for key in mine[0]:
            vals = [r.get(key) for r in mine]
            if key in ("recipe", "seed") or not all(isinstance(v, int | float) for v in vals):
                continue
            arr = np.asarray(vals, dtype=float)
            out[key] = f"{np.nanmean(arr):.4f} ± {np.nanstd(arr, ddof=1) if len(arr) > 1 else 0.0:.4f}"
        summary.append(out)
    return summary


def plot_curves(cells: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Training curves per recipe and accuracy-vs-ε (mean ± std over seeds) as PNG."""
    recipes = list(dict.fromkeys(c["recipe"] for c in cells))
    return [
        _plot_accuracy_vs_eps(cells, recipes, folder / "accuracy_vs_eps.png"),
        _plot_training_curves(cells, recipes, folder / "training_curves.png"),
    ]


def _plot_accuracy_vs_eps(cells: list[dict[str, Any]], recipes: list[str], path: Path) -> Path:
    """PGD test accuracy against ε, one line per recipe (mean over seeds, ± std shaded)."""
    fig = agg_figure(6, 4)
    ax = fig.subplots()
    for recipe in recipes:
        mine = [c for c in cells if c["recipe"] == recipe]
        eps = [p["eps"] * 255 for p in mine[0]["robustness"]]
        acc = np.array([[p["robust_acc"] for p in c["robustness"]] for c in mine])
        m, s = acc.mean(0), acc.std(0)
        ax.plot(eps, m, marker="o", label=recipe)
        ax.fill_between(eps, m - s, m + s, alpha=0.15)
    ax.set(
        xlabel="ε (×1/255, pixel units)", ylabel="PGD accuracy (test)", title="Accuracy vs ε (mean ± std over seeds)", ylim=(0, 1)
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _plot_training_curves(cells: list[dict[str, Any]], recipes: list[str], path: Path) -> Path:
    """The validation monitor per epoch, one panel per stage, for the first cell of every recipe."""
    stages = max(len(c["history"]) for c in cells)
    fig = agg_figure(5 * stages, 3.6)
    axes = fig.subplots(1, stages, squeeze=False)
    for recipe in recipes:
        c = next(c for c in cells if c["recipe"] == recipe)
        for i, stage in enumerate(c["history"]):
            h = stage["history"]
            axes[0, i].plot(
                [e["epoch"] for e in h], [e[stage["monitor"]] for e in h], marker=".", label=f"{recipe} ({stage['regime']})"
            )
    for i, axis in enumerate(axes[0]):
        axis.set(xlabel="epoch", ylabel="validation monitor", title=f"stage {i + 1} (seed {cells[0]['seed']})")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


_ATTRIBUTION_COLUMNS = [
    "recipe",
    "ig_clean_region_mass",
    "ig_attacked_region_mass",
    "ig_clean_pointing_game",
    "ig_clean_deletion_auc",
    "ig_clean_insertion_auc",
    "randomisation_spearman",
    "infidelity",
]


def write_experiment_report(
    exp: ExperimentConfig, base: RunConfig, cells: list[dict[str, Any]], folder: Path, extra_images: list[Path]
) -> Path:
    """Write ``results.csv``, ``summary.csv``, the plots and ``report.md`` into ``folder``; return the report."""
    rows = [cell_row(c) for c in cells]
    write_csv(folder / "results.csv", rows)
    recipes = [str(r) for r in exp.recipes]
    summary = summarise(rows, recipes)
    write_csv(folder / "summary.csv", summary)
    plots = plot_curves(cells, folder)
    eps_cols = [k for k in rows[0] if k.startswith("robust_acc@")]
    lines = [
        *_report_header(exp, base),
        "## Mean ± std over seeds\n",
        markdown_table(
            summary,
            ["recipe", "seeds", "test_acc", "test_auc", "test_bal_acc", "test_ece", *eps_cols, "square_acc", "train_seconds"],
        ),
        "\n## Attribution quality (mean ± std over seeds)\n",
        markdown_table(summary, _ATTRIBUTION_COLUMNS),
        "\n`region_mass`: share of positive attribution inside the label region (lesion mask or centre 32×32); "
        "chance level is the region's area. Deletion / insertion AUC (a blurred copy as the reference image; each "
        "curve divided by the probability on the unperturbed image, so a model that ignores its input scores 1): "
        "lower / higher is better; `*_diff` is the map's AUC minus that of random pixel orders. "
        "`randomisation_spearman`: rank correlation with a randomly re-initialised model (should be low).\n",
        "## Per cell (test accuracy with bootstrap 95% CI)\n",
        markdown_table(rows, ["recipe", "seed", "test_acc", "test_acc_lo", "test_acc_hi", "test_auc", *eps_cols, "flags"]),
        "\n## Plots\n",
        *[f"![{p.stem}]({p.name})" for p in [*plots, *extra_images]],
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"


def _report_header(exp: ExperimentConfig, base: RunConfig) -> list[str]:
    """The report's title and the paragraphs saying what was trained and how it was scored."""
    return [
        f"# Experiment `{exp.name}`\n",
        f"Base config: `{exp.base}` — data `{base.data.dataset}` ({base.data.image_size} px), encoder `{base.model.arch}`, "
        f"training attack PGD-{base.attack.steps} at ε = {base.attack.eps * 255:g}/255, "
        f"{base.pretrain.epochs}+{base.finetune.epochs} epochs. Seeds: {exp.seeds}.\n",
        f"Robust accuracy: PGD-{exp.pgd_steps} with {exp.pgd_restarts} restarts on a seeded random subsample of "
        f"{exp.n_robust} test images (an image counts when correct clean and attacked); "
        f"Square attack ({exp.square_queries} queries) at the largest ε on {exp.n_square}. Attributions: Integrated Gradients "
        f"(baseline {exp.attribution.baseline}, {SCORING_STEPS}-point Gauss–Legendre rule; the largest completeness error "
        f"is `ig_rel_error_max`) on {exp.attribution.n_images} test images, clean and PGD-attacked.\n",
    ]


def run_experiment(exp: ExperimentConfig, base: RunConfig, log: Log = lambda _m: None) -> Path:
    """Run (or resume) every cell, then write the report folder; returns the report path."""
    folder = exp.output_dir / exp.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json"), indent=2))
    cells = [run_cell(exp, base, recipe, seed, log) for recipe in exp.recipes for seed in exp.seeds]
    grid = _ig_grid(exp, base, folder)
    return write_experiment_report(exp, base, cells, folder, [grid])


def _ig_grid(exp: ExperimentConfig, base: RunConfig, folder: Path) -> Path:
    """The paper's Fig. 1 for the first seed of every recipe."""
    from robustdx.core.release.bundle import load_bundle

    models = {}
    for recipe in exp.recipes:
        cfg = cell_config(base, exp, recipe, exp.seeds[0])
        models[str(recipe)] = load_bundle(cfg.run_dir / "bundle").model
    splits = build_splits(base.data)
    n = exp.attribution.n_grid
    items = [splits.test[i] for i in _pick_both_classes(splits.test.labels, n)]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items])
    grid = GridConfig(attack=base.attack, baseline=exp.attribution.baseline, tol=exp.attribution.tol)
    return save_attack_grid(models, images, labels, folder / "ig_grid.png", grid)


def _pick_both_classes(labels: np.ndarray, n: int) -> list[int]:
    """The first ``n`` indices alternating over classes (so the grid shows tumour and normal)."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n and any(by_class):
        for idx in by_class:
            if idx and len(picked) < n:
                picked.append(int(idx.pop(0)))
    return picked
