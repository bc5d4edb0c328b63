"""Recipes: the paper's models as sequences of training stages, run end to end.

``ce``, ``adv_ce``, ``adv_ce_ft``, ``supcon_ft`` and ``adv_supcon_ft`` are the five models of the
paper's tables; ``supcon`` / ``adv_supcon`` stop after pre-training (encoders without a head).
:func:`run_recipe` trains every stage (each resumable in its own folder), evaluates clean and
robust accuracy on the test split, and writes the model bundle and a Markdown report. The CLI,
the Prefect flows and the Ray Tune trainable all call this one function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from robustdx.core.config import ConfigError, Recipe, Regime, RunConfig, dump_config
from robustdx.core.data import Splits, build_splits
from robustdx.core.data.snapshot import base_snapshot
from robustdx.core.evaluation.breakdown import breakdown
from robustdx.core.evaluation.metrics import centroid_accuracy, classification_metrics, embeddings, predict
from robustdx.core.evaluation.model_card import render_model_card
from robustdx.core.evaluation.report import write_report
from robustdx.core.evaluation.robustness import EvalConfig, robust_accuracy
from robustdx.core.models import RobustDxNet, build_model
from robustdx.core.release.bundle import load_bundle, save_bundle
from robustdx.core.training.trainer import EpochCallback, StagePlan, StageResult, Trainer
from robustdx.core.util import atomic_write_bytes, resolve_device, seed_everything

RECIPES: dict[Recipe, list[tuple[Regime, str]]] = {
    Recipe.CE: [(Regime.CE, "pretrain")],
    Recipe.ADV_CE: [(Regime.ADV_CE, "pretrain")],
    Recipe.ADV_CE_FT: [(Regime.ADV_CE, "pretrain"), (Regime.FINETUNE, "finetune")],
    Recipe.SUPCON: [(Regime.SUPCON, "pretrain")],
    Recipe.SUPCON_FT: [(Regime.SUPCON, "pretrain"), (Regime.FINETUNE, "finetune")],
    Recipe.ADV_SUPCON: [(Regime.ADV_SUPCON, "pretrain")],
    Recipe.ADV_SUPCON_FT: [(Regime.ADV_SUPCON, "pretrain"), (Regime.FINETUNE, "finetune")],
}
VOLATILE_KEYS = frozenset({"progress", "device", "output_dir", "channels_last"})
"""Run-config keys that may change between a run and its resumption (where and how it runs, not what)."""


def stage_dir(cfg: RunConfig, index: int) -> Path:
    """The folder of stage ``index`` (0-based) of ``cfg.recipe``: ``<run_dir>/<index+1>-<regime>``."""
    return cfg.run_dir / f"{index + 1}-{RECIPES[cfg.recipe][index][0]}"


@dataclass
class RunResult:
    """A finished run: its folder, stage results, test metrics, bundle and report, and the trained model."""

    run_dir: Path
    stages: list[StageResult]
    metrics: dict[str, Any]
    bundle: Path
    report: Path
    model: RobustDxNet


def has_classifier(recipe: Recipe) -> bool:
    """Whether ``recipe`` ends in a classifier head (every recipe but the bare SupCon encoders)."""
    return RECIPES[recipe][-1][0] not in (Regime.SUPCON, Regime.ADV_SUPCON)


def _guard_config(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume a run folder that was started with a different configuration."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        import yaml

        try:  # through the model, so that fields added since (with their defaults) do not count as a change
            saved_cfg = RunConfig.model_validate(yaml.safe_load(saved.read_text()) or {}).model_dump(mode="json")
        except ValueError as err:
            raise ConfigError(f"{saved} is no longer a valid run config ({err}); use another name or delete it") from None
        old = {k: v for k, v in saved_cfg.items() if k not in VOLATILE_KEYS}
        new = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in VOLATILE_KEYS}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration (differs in: {', '.join(diff)}). "
                f"Use another name (--set name=...) or delete the folder to start over."
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(dump_config(cfg))


def evaluate_model(
    model: RobustDxNet, cfg: RunConfig, splits: Splits, device: torch.device, max_robust: int | None = 256
) -> dict[str, Any]:
    """Clean test metrics (per hospital/group too) and robust accuracy under ``cfg.eval_attack``."""
    model.to(device).eval()
    bs = cfg.data.eval_batch_size
    if has_classifier(cfg.recipe):
        probs, labels, groups = predict(model, DataLoader(splits.test, batch_size=bs), device)
        test = classification_metrics(probs, labels, groups)
        val = classification_metrics(*predict(model, DataLoader(splits.val, batch_size=bs), device))
        sample = EvalConfig(max_n=max_robust, batch_size=bs, seed=cfg.seed)
        robust = robust_accuracy(model, splits.test, cfg.eval_attack, sample, device=device)
        detail = breakdown(
            probs.argmax(1), labels, groups, robust["items"], robust["robust_correct"], n_classes=cfg.model.num_classes
        )
        robust = {k: v for k, v in robust.items() if k not in ("items", "robust_correct")}
        return {"test": test, "val": val, "robust": robust, "breakdown": detail}
    tf, tl = embeddings(model, splits.train_eval, device, bs, max_n=1024)
    out = {}
    for name in ("val", "test"):
        f, lab = embeddings(model, getattr(splits, name), device, bs)
        out[name] = {"centroid_acc": centroid_accuracy(tf, tl, f, lab)}
    return out


def reference_statistics(
    model: RobustDxNet, splits: Splits, device: torch.device, n: int, classifier: bool
) -> dict[str, torch.Tensor]:
    """Training-set embeddings (and class probabilities) kept in the bundle as the drift reference."""
    feats, labels = embeddings(model, splits.train_eval, device, max_n=n)
    ref = {"embeddings": feats, "labels": labels}
    if classifier:
        with torch.no_grad():
            ref["probs"] = torch.softmax(model.classifier.to(device)(feats.to(device)).float(), 1).cpu()
    return ref


def run_recipe(
    cfg: RunConfig, callbacks: Iterable[EpochCallback] = (), log: Callable[[str], None] = lambda _m: None
) -> RunResult:
    """Train every stage of ``cfg.recipe``, evaluate, bundle and report; resumable at every step."""
    run_dir = cfg.run_dir
    _guard_config(cfg, run_dir)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)  # the initial weights depend on the seed only
    model = build_model(cfg.model)
    cache: dict[bool, Splits] = {}

    def splits_for(two_views: bool) -> Splits:
        if two_views not in cache:
            cache[two_views] = build_splits(cfg.data, two_views=two_views)
        return cache[two_views]

    stages: list[StageResult] = []
    for i, (regime, key) in enumerate(RECIPES[cfg.recipe]):
        stage_cfg = getattr(cfg, key)
        plan = StagePlan(regime=regime, stage=stage_cfg, folder=stage_dir(cfg, i))
        trainer = Trainer(cfg, plan, splits=splits_for(regime in (Regime.SUPCON, Regime.ADV_SUPCON)), callbacks=callbacks)
        log(f"stage {i + 1}/{len(RECIPES[cfg.recipe])}: {regime} ({stage_cfg.epochs} epochs) on {device}")
        stages.append(trainer.fit(model))
    splits = splits_for(False)
    metrics_path, bundle_path = run_dir / "metrics.json", run_dir / "bundle"
    if metrics_path.is_file() and (bundle_path / "manifest.json").is_file():
        metrics = json.loads(metrics_path.read_text())
    else:
        log("evaluating on the test split (clean and PGD)")
        metrics = _evaluate_and_bundle(model, cfg, stages, splits, device)
    bundle = load_bundle(bundle_path)
    report = write_report(run_dir / "report.md", cfg, stages, metrics, bundle)
    return RunResult(run_dir, stages, metrics, bundle_path, report, bundle.model)


def _evaluate_and_bundle(
    model: RobustDxNet, cfg: RunConfig, stages: list[StageResult], splits: Splits, device: torch.device
) -> dict[str, Any]:
    """Evaluate the trained model, write its bundle (with the drift reference) and ``metrics.json``;
    return the metrics."""
    metrics = evaluate_model(model, cfg, splits, device)
    metrics["stages"] = [
        {
            "regime": s.regime,
            "monitor": s.monitor,
            "best_score": s.best_score,
            "best_epoch": s.best_epoch,
            "seconds": s.seconds,
        }
        for s in stages
    ]
    ref = reference_statistics(model, splits, device, cfg.n_reference, has_classifier(cfg.recipe))
    card = splits.card()
    if card["snapshot"] is None:  # no feedback: the bundle still names its data, the base set's snapshot id
        card["snapshot"] = base_snapshot(splits)
    save_bundle(cfg.run_dir / "bundle", model.cpu(), cfg, metrics, card, ref, lambda v: render_model_card(cfg, metrics, card, v))
    atomic_write_bytes(cfg.run_dir / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    return metrics
