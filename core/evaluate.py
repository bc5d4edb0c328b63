"""Evaluation: predictions, classification metrics per group, robust accuracy.

Always report robust accuracy beside clean accuracy (SCIENCE.md, weakness 3); per-group
(hospital) and worst-group accuracy expose domain shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustdx.core.attacks import attack_ce
from robustdx.core.config import AttackConfig
from robustdx.core.losses import cross_entropy


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities, labels and groups of every item in ``loader`` (model in eval mode)."""
    was = model.training
    model.eval()
    probs, labels, groups = [], [], []
    for batch in loader:
        x = batch[0].to(device)
        probs.append(torch.softmax(model(x).float(), dim=1).cpu())
        labels.append(batch[1])
        groups.append(batch[2])
    model.train(was)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(groups).numpy()


def classification_metrics(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC-AUC (binary: positive class 1; else one-vs-rest), log-loss,
    and per-group / worst-group accuracy when ``groups`` is given."""
    pred = probs.argmax(1)
    out: dict[str, Any] = {
        "acc": float((pred == labels).mean()),
        "bal_acc": float(balanced_accuracy_score(labels, pred)),
        "loss": float(cross_entropy(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels))),
    }
    if len(np.unique(labels)) < 2:
        out["auc"] = float("nan")
    elif probs.shape[1] == 2:
        out["auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        out["auc"] = float(roc_auc_score(labels, probs, multi_class="ovr"))
    if groups is not None:
        per = {str(int(g)): float((pred[groups == g] == labels[groups == g]).mean()) for g in np.unique(groups)}
        out["group_acc"] = per
        out["worst_group_acc"] = min(per.values())
    return out


def robust_accuracy(
    model: nn.Module,
    dataset: Dataset,
    cfg: AttackConfig,
    device: torch.device,
    batch_size: int = 64,
    max_n: int | None = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy on PGD examples (clean accuracy on the same items alongside) for at most ``max_n`` items."""
    n = len(dataset) if max_n is None else min(len(dataset), max_n)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False)
    torch.manual_seed(seed)
    clean = robust = 0
    for batch in loader:
        x, y = batch[0].to(device), batch[1].to(device)
        xa = attack_ce(model, x, y, cfg)
        with torch.no_grad():
            model.eval()
            clean += int((model(x).argmax(1) == y).sum())
            robust += int((model(xa).argmax(1) == y).sum())
    return {"n": n, "eps": float(cfg.eps), "clean_acc": clean / max(n, 1), "robust_acc": robust / max(n, 1)}


@torch.no_grad()
def embeddings(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 128, max_n: int | None = None
) -> tuple[Tensor, Tensor]:
    """Encoder features and labels of (the first ``max_n`` items of) ``dataset``."""
    n = len(dataset) if max_n is None else min(len(dataset), max_n)
    was = model.training
    model.eval()
    feats, labels = [], []
    for batch in DataLoader(Subset(dataset, range(n)), batch_size=batch_size):
        feats.append(model.embed(batch[0].to(device)).float().cpu())
        labels.append(batch[1])
    model.train(was)
    return torch.cat(feats), torch.cat(labels)


def centroid_accuracy(train_feats: Tensor, train_labels: Tensor, feats: Tensor, labels: Tensor) -> float:
    """Nearest-class-centroid accuracy (cosine): how well an encoder without a head separates classes."""
    tf = torch.nn.functional.normalize(train_feats, dim=1)
    classes = torch.unique(train_labels)
    cents = torch.nn.functional.normalize(torch.stack([tf[train_labels == c].mean(0) for c in classes]), dim=1)
    pred = classes[(torch.nn.functional.normalize(feats, dim=1) @ cents.T).argmax(1)]
    return float((pred == labels).float().mean())
