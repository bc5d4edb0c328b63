"""Validation scores that decide between models: clean accuracy, robust accuracy at the serving ε,
and how well the Integrated-Gradients attributions sit on the label region.

Why one module: the sweep's objective, the evaluation flow and the promotion gates must compare
models on *the same* images with *the same* attack, or a "better" candidate may only have been
measured differently. :func:`validation_scores` is that one measurement; the test split stays
untouched for the reports (SCIENCE.md: selection on validation, reporting on test).

* clean: accuracy, balanced accuracy and AUC on the whole validation split;
* robust: PGD accuracy (correct clean *and* attacked) at the serving ε on a seeded validation subset;
* attribution: mean share of positive IG mass inside the label region (BUSI lesion masks; the
  Camelyon17/PCam centre 32×32 that carries the tumour label), with the blur baseline.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from robustdx.core.config import AttackConfig, DatasetName, PixelBudget, RunConfig
from robustdx.core.data import ImageDataset, Splits
from robustdx.core.evaluation.metrics import classification_metrics, predict
from robustdx.core.evaluation.robustness import EvalConfig, robust_accuracy
from robustdx.core.explain import quality as attr_metrics
from robustdx.core.explain.ig import SCORING_STEPS, integrated_gradients
from robustdx.core.explain.maps import attribution_map

Objective = Literal["robust_mean", "clean", "robust"]
# what the promotion gates compare ("recent_*": on a data snapshot's held-out clinician-labelled images)
SCORE_KEYS = ("clean_acc", "robust_acc", "attribution", "recent_clean_acc", "recent_robust_acc")
REPORT_KEYS = (
    "clean_acc",
    "balanced_acc",
    "auc",
    "robust_acc",
    "attribution",
    "n_val",
    "n_robust",
    "recent_clean_acc",
    "recent_robust_acc",
    "n_recent",
)  # tables; fmt: skip


def region_name(cfg: RunConfig) -> str:
    """What the label depends on: BUSI's lesion masks, else the Camelyon17/PCam centre 32×32."""
    return "lesion" if cfg.data.dataset == DatasetName.BUSI else "centre"


def region_batch(
    splits: Splits, cfg: RunConfig, n: int, split: Literal["val", "test"] = "test"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The first ``n`` images of ``split``, their labels and the region the label depends on."""
    ds = getattr(splits, split)
    if cfg.data.dataset == DatasetName.BUSI:
        ds = ImageDataset(ds.records, ds.transform, with_masks=True)
        items = [ds[i] for i in range(min(n, len(ds)))]
        masks = torch.stack([it[3][0] for it in items]) > 0.5
        return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]), masks, region_name(cfg)
    items = [ds[i] for i in range(min(n, len(ds)))]
    x = torch.stack([it[0] for it in items])
    centre = attr_metrics.centre_mask(x.shape[-2], x.shape[-1]).bool()
    return x, torch.tensor([it[1] for it in items]), centre.expand(len(x), -1, -1), region_name(cfg)


def attribution_score(
    model: nn.Module, x: torch.Tensor, masks: torch.Tensor, baseline: str = "blur", n_steps: int = SCORING_STEPS
) -> float | None:
    """Mean positive IG mass inside ``masks`` for the predicted class (None when no image has a region);
    IG on ``n_steps`` Gauss–Legendre points, the rule of every scored map."""
    has_region = masks.flatten(1).any(1)
    if not has_region.any():
        return None
    x, masks = x[has_region], masks[has_region]
    with torch.no_grad():
        target = model(x).argmax(1)
    ig = integrated_gradients(model, x, target=target, baseline=baseline, n_steps=n_steps)
    return float(attr_metrics.mass_in_region(attribution_map(ig.attributions), masks).mean())


class ScoringSettings(BaseModel):
    """What :func:`validation_scores` measures: the ε of the robust score and how many images each score uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eps: PixelBudget = Field(..., description="L∞ budget of the robust score in [0, 1] pixel units (the serving ε).")
    n_robust: int = Field(256, ge=1, description="Validation images attacked with PGD (a seeded subsample).")
    n_attr: int = Field(16, ge=0, description="Validation images explained with IG for the attribution score (0: skip).")
    steps: int | None = Field(None, ge=1, le=1000, description="PGD steps; None: the run's ``eval_attack.steps``.")


def validation_scores(
    model: nn.Module, cfg: RunConfig, splits: Splits, device: torch.device, settings: ScoringSettings
) -> dict[str, Any]:
    """Clean, robust (PGD at ``settings.eps``) and attribution scores of ``model`` on the validation split, and
    clean and robust accuracy on the recent split when the data is a snapshot (``recent_*``, reported apart).

    ``settings.steps`` defaults to ``cfg.eval_attack.steps``; restarts and seed come from ``cfg`` so two
    models scored with the same ``cfg`` see the same images and the same random starts.
    """
    eps = settings.eps
    model.to(device).eval()
    probs, labels, _groups = predict(model, DataLoader(splits.val, batch_size=cfg.data.eval_batch_size), device)
    clean = classification_metrics(probs, labels)
    pred = probs.argmax(1)
    attack = AttackConfig(eps=eps, steps=settings.steps or cfg.eval_attack.steps, restarts=cfg.eval_attack.restarts)
    sample = EvalConfig(max_n=settings.n_robust, batch_size=cfg.data.eval_batch_size, seed=cfg.seed, n_boot=200)
    robust = robust_accuracy(model, splits.val, attack, sample, device=device)
    attribution = None
    if settings.n_attr:  # 0 skips the attribution score (and loading its images)
        x, _y, masks, _region = region_batch(splits, cfg, settings.n_attr, split="val")
        attribution = attribution_score(model, x.to(device), masks.to(device))
    recent: dict[str, Any] = {}
    if splits.recent is not None:  # the snapshot's held-out recent images: scored apart from the base validation set
        r_probs, r_labels, _ = predict(model, DataLoader(splits.recent, batch_size=cfg.data.eval_batch_size), device)
        r_robust = robust_accuracy(model, splits.recent, attack, sample, device=device)
        recent = {"recent_clean_acc": float(classification_metrics(r_probs, r_labels)["acc"]),
                  "recent_robust_acc": float(r_robust["robust_acc"]), "n_recent": len(r_labels)}  # fmt: skip
    return {
        **recent,
        "clean_acc": float(clean["acc"]),
        "balanced_acc": float(clean["bal_acc"]),
        "class_recall": {  # what GateConfig.class_recall_tolerance compares
            name: float((pred[labels == k] == k).mean()) for k, name in enumerate(splits.class_names) if (labels == k).any()
        },
        "auc": clean.get("auc"),
        "robust_acc": float(robust["robust_acc"]),
        "eps": float(eps),
        "pgd_steps": attack.steps,
        "attribution": attribution,
        "region": region_name(cfg),
        "n_val": len(labels),
        "n_robust": int(robust["n"]),
    }


def objective_score(scores: dict[str, Any], objective: Objective = "robust_mean") -> float:
    """The single number a sweep maximises: mean of clean and robust accuracy by default."""
    if objective == "clean":
        return float(scores["clean_acc"])
    if objective == "robust":
        return float(scores["robust_acc"])
    return (float(scores["clean_acc"]) + float(scores["robust_acc"])) / 2
