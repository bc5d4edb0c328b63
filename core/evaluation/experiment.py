"""``robustdx experiment``: regenerate a paper table under a protocol whose numbers can carry a conclusion.

Why it exists: the paper reports one run per cell, clean accuracy only and anecdotal saliency maps
(SCIENCE.md, weaknesses 3, 5 and 7). A cell here is one recipe trained with one seed (and, with
cross-validation, on one fold) through the same :func:`run_recipe` the CLI, the Prefect flows and the Ray
Tune trainable use — every regime on the same optimisation budget (:class:`~robustdx.core.config.Budget`) —
then scored on a fixed set of evaluation items shared by every cell (:mod:`robustdx.core.evaluation.suite`):

* clean: accuracy and per-class recall with Wilson intervals, balanced accuracy and AUC with class-stratified
  bootstrap intervals, calibration;
* robust: per item the worst case over PGD and APGD (and Square at the training ε) at the headline budgets
  on every item, over the rest of the ε grid and at sanity budgets on a prefix, with the flags that say when
  an evaluation cannot be trusted;
* attributions: IG on a fixed Gauss–Legendre rule, each score beside the same score of a plain-gradient map
  and of a fully randomised model, deletion/insertion beside random orders, baseline-aware infidelity, the
  cascading randomisation check.

Every cell is written to ``cells/NAME.json`` as soon as it is done (per-item outcomes included, for paired
tests), so a rerun skips finished cells and an interrupted training resumes. The report
(:mod:`robustdx.core.evaluation.experiment_report`) opens with what the results support.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from robustdx.core.attacks import attack_ce
from robustdx.core.config import Budget, DatasetName, ExperimentConfig, Recipe, RunConfig, parse_config
from robustdx.core.data import Splits, build_splits
from robustdx.core.data.base import ImageDataset
from robustdx.core.evaluation import metrics as ev
from robustdx.core.evaluation import statistics as st
from robustdx.core.evaluation.suite import add_sanity_square, evaluation_items, run_suite, sanity_without_square, suite_flags
from robustdx.core.explain import quality
from robustdx.core.explain.ig import integrated_gradients
from robustdx.core.explain.maps import attribution_map
from robustdx.core.training.recipes import RECIPES, run_recipe
from robustdx.core.training.strategies import create_strategy
from robustdx.core.util import atomic_write_bytes, git_commit, resolve_device

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------------------------------------
def cell_name(recipe: Recipe | str, seed: int, fold: int | None) -> str:
    return f"{recipe}-s{seed}" + ("" if fold is None else f"-f{fold}")


def cells_of(exp: ExperimentConfig) -> list[tuple[Recipe, int, int | None]]:
    """Every (recipe, seed, fold) of the table, seed- and fold-major: an interrupted run has every recipe of
    the first seeds (a table, if a small one) rather than every seed of the first recipes (no comparison)."""
    folds: list[int | None] = list(range(exp.folds)) if exp.folds else [None]
    return [(r, s, f) for s in exp.seeds for f in folds for r in exp.recipes]


def budget_epochs(cfg: RunConfig, budget: Budget) -> dict[str, int]:
    """Epochs of each stage of ``cfg.recipe`` that spend ``budget.passes`` optimiser passes over the training
    split in all (a stage on the paper's clean + adversarial schedule makes two passes an epoch).

    Raises:
        ValueError: the budget cannot be split into whole epochs (the message says which budget would).
    """
    stages = RECIPES[cfg.recipe]
    passes = {key: len(create_strategy(regime, getattr(cfg, key)).passes()) for regime, key in stages}
    if len(stages) == 1:
        (key,) = passes
        shares = {key: budget.passes}
    else:
        (pre, _), (fine, _) = ((k, 0) for _, k in stages)
        first = round(budget.passes * budget.pretrain_share / passes[pre]) * passes[pre]
        shares = {pre: first, fine: budget.passes - first}
    epochs = {key: shares[key] // passes[key] for key in shares}
    if any(e < 1 or e * passes[k] != shares[k] for k, e in epochs.items()):
        raise ValueError(
            f"budget.passes={budget.passes} cannot be split into whole epochs for {cfg.recipe} "
            f"(passes per epoch: {passes}); use a multiple of {2 * max(passes.values())}"
        )
    return epochs


def cell_config(base: RunConfig, exp: ExperimentConfig, recipe: Recipe, seed: int, fold: int | None) -> RunConfig:
    """The run config of one cell: the base with this recipe, seed (and fold), name, output folder and budget."""
    raw = base.model_dump(mode="json")
    runs = exp.output_dir / exp.name / "runs"
    raw.update(recipe=str(recipe), seed=seed, name=cell_name(recipe, seed, fold), output_dir=str(runs))
    if fold is not None:
        raw["data"].update(cv_folds=exp.folds, cv_fold=fold, n_test=None)
    cfg = parse_config(raw)
    if exp.budget is None:
        return cfg
    for key, epochs in budget_epochs(cfg, exp.budget).items():
        raw[key]["epochs"] = epochs
    return parse_config(raw)


# ---------------------------------------------------------------------------------------------------------
# the evaluation items
# ---------------------------------------------------------------------------------------------------------
@dataclass
class EvalItems:
    """The evaluation items of a cell, loaded once: images, labels, ids (unique across folds) and label regions."""

    x: Tensor
    y: Tensor
    ids: list[str]
    regions: Tensor  # [N, H, W] bool: the lesion mask (BUSI) or the centre label region (PCam / Camelyon17)
    region: str


def evaluation_data(splits: Splits, cfg: RunConfig, n_items: int | None, device: torch.device) -> EvalItems:
    """The test split's evaluation items in the fixed order of :func:`evaluation_items`."""
    test = splits.test
    busi = cfg.data.dataset == DatasetName.BUSI
    if busi:
        test = ImageDataset(test.records, test.transform, with_masks=True)
    order = evaluation_items(len(test), n_items, cfg.data.split_seed)
    items = [test[int(i)] for i in order]
    x = torch.stack([it[0] for it in items]).to(device)
    if busi:
        regions = torch.stack([it[3][0] for it in items]) > 0.5
    else:
        regions = quality.centre_mask(x.shape[-2], x.shape[-1]).expand(len(x), -1, -1)
    prefix = "" if cfg.data.cv_folds is None else f"f{cfg.data.cv_fold}:"
    return EvalItems(
        x, torch.tensor([int(it[1]) for it in items], device=device), [f"{prefix}{int(i)}" for i in order],
        regions.to(device), "lesion" if busi else "centre",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------------------
def clean_scores(model: nn.Module, data: EvalItems, n_classes: int, exp: ExperimentConfig, seed: int) -> dict[str, Any]:
    """Clean metrics of the evaluation items, every number with its interval."""
    loader = DataLoader(Subset(torch.utils.data.TensorDataset(data.x, data.y, torch.zeros_like(data.y)), range(len(data.y))),
                        batch_size=256)  # fmt: skip
    probs, labels, _ = ev.predict(model, loader, data.x.device)
    pred = probs.argmax(1)
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "acc": st.proportion(int((pred == labels).sum()), len(labels)).to_json(),
        "recall": [r.to_json() for r in st.per_class_recall(pred, labels, n_classes)],
        "bal_acc": {
            "value": st.balanced_accuracy(pred, labels, n_classes),
            "ci": list(st.balanced_accuracy_ci(pred, labels, n_classes, n_boot=exp.n_boot, seed=seed)),
        },  # fmt: skip
        "ece": ev.expected_calibration_error(probs, labels),
    }
    if n_classes == 2 and len(np.unique(labels)) == 2:
        scores = probs[:, 1]
        out["auc"] = {"value": st.auc(scores, labels), "ci": list(st.auc_ci(scores, labels, n_boot=exp.n_boot, seed=seed))}
    out["better_than_chance"] = st.better_than_chance(out["bal_acc"]["ci"][0])
    return out


def _region_scores(amap: Tensor, regions: Tensor) -> dict[str, Any]:
    """Share of positive attribution inside the label region, and the pointing game (with a Wilson interval)."""
    mass = quality.mass_in_region(amap, regions)
    hits = quality.pointing_game(amap, regions)
    return {
        "region_mass": float(torch.nanmean(mass)),
        "pointing_game": st.proportion(int(hits.sum()), len(hits)).to_json(),
    }


def attribution_scores(model: nn.Module, data: EvalItems, cfg: RunConfig, exp: ExperimentConfig) -> dict[str, Any]:
    """IG on the fixed rule, each score beside a plain-gradient map's and a fully randomised model's."""
    a = exp.attribution
    keep = data.regions.flatten(1).any(1).nonzero().flatten()  # BUSI "normal" images have no lesion
    keep = keep if a.n_images is None else keep[: a.n_images]
    x, regions = data.x[keep], data.regions[keep]
    with torch.no_grad():
        target = model(x).argmax(1)
    ig = integrated_gradients(model, x, target=target, baseline=a.baseline, n_steps=a.n_steps)
    ig_map = attribution_map(ig.attributions)
    random_model, _ = quality.randomised_copy(model, seed=cfg.seed + 7919)
    random_ig = integrated_gradients(random_model, x, target=target, baseline=a.baseline, n_steps=a.n_steps)
    x_adv = attack_ce(model, x, target, cfg.attack)
    attacked = integrated_gradients(model, x_adv, target=target, baseline=a.baseline, n_steps=a.n_steps)
    out: dict[str, Any] = {
        "n": int(len(keep)),
        "region": data.region,
        "region_area": float(regions.float().mean()),
        "converged": st.proportion(int(ig.converged(a.tol).sum()), len(keep)).to_json(),
        "ig": _region_scores(ig_map, regions),
        "gradient": _region_scores(attribution_map(quality.gradient_map(model, x, target), reduce="abs"), regions),
        "randomised_model_ig": _region_scores(attribution_map(random_ig.attributions), regions),
        "ig_attacked": _region_scores(attribution_map(attacked.attributions), regions),
    }
    di = quality.deletion_insertion_auc(model, x, ig_map, target, quality.DeletionConfig(baseline="blur", seed=cfg.seed))
    keys = ("deletion", "insertion", "deletion_random", "insertion_random", "deletion_diff", "insertion_diff")
    out["deletion_insertion"] = {k: float(di[k].mean()) for k in keys}
    out.update(_sanity_scores(model, x, target, cfg, exp))
    return out


def _sanity_scores(model: nn.Module, x: Tensor, target: Tensor, cfg: RunConfig, exp: ExperimentConfig) -> dict[str, Any]:
    """The cascading randomisation check and baseline-aware infidelity / max-sensitivity (IG and gradient)."""
    a = exp.attribution

    def ig_fn(m: nn.Module, inputs: Tensor, t: Tensor) -> Tensor:
        return integrated_gradients(m, inputs, target=t, baseline=a.baseline, n_steps=a.n_steps).attributions

    out: dict[str, Any] = {}
    if a.n_sanity:
        cascade = quality.cascading_randomisation(model, x[: a.n_sanity], ig_fn, target[: a.n_sanity], seed=cfg.seed + 7919)
        out["cascading"] = {"stages": cascade["stages"], "mean_spearman": [float(v) for v in cascade["mean_spearman"]],
                            "full_randomisation_spearman": float(cascade["full"]["mean_spearman"])}  # fmt: skip
    if a.n_infidelity:
        xs, ts = x[: a.n_infidelity], target[: a.n_infidelity]
        inf_ig = quality.infidelity_and_sensitivity(model, xs, ig_fn, ts, baseline=a.baseline)
        inf_grad = quality.infidelity_and_sensitivity(model, xs, quality.gradient_map, ts, baseline=None)
        for key in ("infidelity", "sensitivity_max"):
            out[key] = {"ig": float(inf_ig[key].mean()), "gradient": float(inf_grad[key].mean())}
    return out


def evaluate_cell(
    model: nn.Module, cfg: RunConfig, exp: ExperimentConfig, splits: Splits, device: torch.device, log: Log = lambda _m: None
) -> dict[str, Any]:
    """Clean, robust and attribution scores of one trained model on the evaluation items (each budget and the
    attributions logged with their time as they end: a cell takes minutes)."""
    model.to(device).eval()
    data = evaluation_data(splits, cfg, exp.robustness.n_items, device)
    n_classes = cfg.model.num_classes
    robustness = run_suite(model, data.x, data.y, float(cfg.attack.eps), exp.robustness, n_classes, log=log)
    started = time.perf_counter()
    attribution = attribution_scores(model, data, cfg, exp)
    attribution["seconds"] = time.perf_counter() - started
    log(f"attributions ({attribution['n']} images, with their controls): {attribution['seconds']:.0f} s")
    return {
        "items": data.ids,
        "labels": data.y.cpu().tolist(),
        "test": clean_scores(model, data, n_classes, exp, cfg.seed),
        "robustness": robustness,
        "flags": robustness["flags"],
        "attribution": attribution,
    }


def cell_file(exp: ExperimentConfig, cell: tuple[Recipe, int, int | None]) -> Path:
    """Where a finished cell's record is kept."""
    return exp.output_dir / exp.name / "cells" / f"{cell_name(*cell)}.json"


def run_cell(exp: ExperimentConfig, base: RunConfig, cell: tuple[Recipe, int, int | None], log: Log) -> dict[str, Any]:
    """Train (or resume) and score one cell; cached in ``cells/NAME.json``."""
    recipe, seed, fold = cell
    name = cell_name(recipe, seed, fold)
    out = cell_file(exp, cell)
    cfg = cell_config(base, exp, recipe, seed, fold)
    if out.is_file():
        record = json.loads(out.read_text())
        if not complete_cell(record, cfg, exp, out, log):
            log(f"{name}: done before, skipped")
        return record
    environment = run_environment()  # read before training: the commit whose code this process runs
    log(f"{name}: training ({', '.join(f'{k} {getattr(cfg, k).epochs} epochs' for _, k in RECIPES[recipe])})")
    t0 = time.perf_counter()
    result = run_recipe(cfg, log=lambda m: log(f"  {m}"))
    t1 = time.perf_counter()
    log(f"{name}: evaluating ({len(exp.robustness.budgets(float(cfg.attack.eps)))} budgets, attributions)")
    scores = evaluate_cell(
        result.model, cfg, exp, build_splits(cfg.data), resolve_device(cfg.device), log=lambda m: log(f"  {m}")
    )
    record = {
        "name": name, "recipe": str(recipe), "seed": seed, "fold": fold,
        "epochs": {k: getattr(cfg, k).epochs for _, k in RECIPES[recipe]},
        "train_seconds": sum(s.seconds for s in result.stages), "wall_seconds": time.perf_counter() - t0,
        "eval_seconds": time.perf_counter() - t1, "bundle": str(result.bundle), "environment": environment,
        "history": [{"regime": s.regime, "monitor": s.monitor, "history": s.history} for s in result.stages],
        **scores,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, lambda p: p.write_text(json.dumps(record, indent=1, default=float)))
    return record


def complete_cell(record: dict[str, Any], cfg: RunConfig, exp: ExperimentConfig, out: Path, log: Log) -> bool:
    """Bring a cell finished under an older protocol up to this one where no retraining is needed — Square at the
    sanity budgets (:func:`~robustdx.core.evaluation.suite.add_sanity_square`) — and rewrite its record ``out``; False
    when there was nothing to add, or its bundle is gone (then the record is kept as it is, and the log says so).

    Raises:
        ValueError: the evaluation items differ from the record's (the data or its split changed).
    """
    from robustdx.core.release.bundle import load_bundle

    r, eps = exp.robustness, float(cfg.attack.eps)
    if not sanity_without_square(record["robustness"], eps, r):
        return False
    bundle = cfg.run_dir / "bundle"
    if not bundle.is_dir():
        log(f"{record['name']}: done before; its bundle ({bundle}) is gone, so Square at the sanity budgets was not added")
        return False
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    data = evaluation_data(build_splits(cfg.data), cfg, r.n_items, device)
    if data.ids != record["items"]:
        raise ValueError(f"{record['name']}: the evaluation items differ from the record's: was the data or its split changed?")
    model = load_bundle(bundle).model.to(device).eval()
    add_sanity_square(record["robustness"], model, data.x, data.y, eps, r, cfg.model.num_classes)
    record["flags"] = record["robustness"]["flags"]
    record["completed"] = {"what": "Square at the sanity budgets", "seconds": time.perf_counter() - started,
                           "environment": run_environment()}  # fmt: skip
    atomic_write_bytes(out, lambda p: p.write_text(json.dumps(record, indent=1, default=float)))
    for b in record["robustness"]["budgets"]:
        if b["role"] == "sanity" and "square_attacked" in b:
            log(
                f"{record['name']}: done before; Square at eps={b['eps_label']} broke {b['square_only_broken']} of the "
                f"{b['square_attacked']} items the gradient attacks left: robust {b['robust_acc']['value']:.3f}"
            )
    return True


def run_environment() -> dict[str, str]:
    """Where and from which code a cell ran: the git commit (``+dirty`` with uncommitted changes to tracked
    files), the device, versions and threads (a cell's timings and floating-point details depend on them)."""
    device = resolve_device("auto")
    return {
        "commit": _git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "threads": str(torch.get_num_threads()),
    }  # fmt: skip


@functools.cache
def _git_commit() -> str:
    """The commit of this project's checkout (not of the working directory), read once per process: the code a
    process runs is what it imported, so a commit made while it runs is not its code."""
    return git_commit(Path(__file__).resolve().parents[2])


def _print_log(message: str) -> None:
    print(message, flush=True)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_cell_job(job: tuple[ExperimentConfig, RunConfig, tuple[Recipe, int, int | None]]) -> tuple[str, str | None]:
    """One cell in a worker: ``(name, None)``, or ``(name, traceback)`` so one failed cell does not stop the others."""
    exp, base, cell = job
    try:
        run_cell(exp, base, cell, _print_log)
    except Exception:  # noqa: BLE001 - reported by the parent, which fails the run once every cell has had its turn
        return cell_name(*cell), traceback.format_exc()
    return cell_name(*cell), None


def run_cells_parallel(exp: ExperimentConfig, base: RunConfig, workers: int, log: Log) -> None:
    """Run the unfinished cells in ``workers`` spawned processes (each its own cell, its own run folder).

    Why: one small model leaves most of a GPU (or a many-core CPU) idle; cells are independent and each is
    written when done, so a killed pool loses only the cells in flight, which resume on the next run.
    Each worker gets an equal share of the CPU threads. Worker output goes to stdout, prefixed by cell.

    Raises:
        RuntimeError: a cell failed (after every other cell has run; each failure's traceback is logged).
    """
    pending = [c for c in cells_of(exp) if not cell_file(exp, c).is_file()]
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"{len(pending)} cells to run in {workers} worker processes ({threads} threads each)")
    failed: dict[str, str] = {}
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (threads,)) as pool:
        for done, (name, error) in enumerate(pool.imap_unordered(_run_cell_job, [(exp, base, c) for c in pending]), 1):
            if error:
                failed[name] = error
                log(f"{name}: FAILED ({done}/{len(pending)})\n{error}")
            else:
                log(f"{name}: finished ({done}/{len(pending)})")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(pending)} cells failed ({', '.join(failed)}); the others are kept")


def run_experiment(
    exp: ExperimentConfig, base: RunConfig, log: Log = lambda _m: None, report_only: bool = False, workers: int = 1
) -> Any:
    """Run (or resume) every cell, then write the report folder; returns the report path.

    With ``report_only`` nothing is trained: the report covers the cells finished so far and says which
    are missing (a long run can be looked at while it goes on). With ``workers`` > 1 the unfinished cells
    run in that many processes (:func:`run_cells_parallel`) before the report is written. Every cell's flags
    are judged again by today's rules (:func:`~robustdx.core.evaluation.suite.suite_flags`) for the report.

    Raises:
        ValueError: ``report_only`` and no cell is finished yet.
    """
    from robustdx.core.evaluation.experiment_report import write_experiment_report

    folder = exp.output_dir / exp.name
    folder.mkdir(parents=True, exist_ok=True)
    if report_only:
        cells = [json.loads(cell_file(exp, c).read_text()) for c in cells_of(exp) if cell_file(exp, c).is_file()]
        if not cells:
            raise ValueError(f"no finished cell in {folder / 'cells'} yet: run the experiment first")
    else:
        (folder / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json"), indent=2))
        if workers > 1:
            run_cells_parallel(exp, base, workers, log)
        cells = [run_cell(exp, base, cell, log) for cell in cells_of(exp)]
    for c in cells:  # judged by today's rules (a record keeps the flags of the code that wrote it)
        c["flags"] = c["robustness"]["flags"] = suite_flags(c["robustness"]["budgets"], exp.robustness)
    return write_experiment_report(exp, base, cells, folder)


def attack_grid_models(exp: ExperimentConfig, base: RunConfig, recipes: list[Recipe] | None = None) -> dict[str, nn.Module]:
    """The first cell's model of every recipe, or of ``recipes`` (for the clean-vs-attacked IG grid, the paper's Fig. 1)."""
    from robustdx.core.release.bundle import load_bundle

    fold = 0 if exp.folds else None
    chosen = exp.recipes if recipes is None else recipes
    return {str(r): load_bundle(cell_config(base, exp, r, exp.seeds[0], fold).run_dir / "bundle").model for r in chosen}
