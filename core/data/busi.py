"""Breast Ultrasound Images (BUSI) in the original release layout, with lesion masks.

``root/Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png`` with ``NAME_mask.png``,
``NAME_mask_1.png``, ... beside it; the lesion is the union of the masks. The task is the paper's:
malignant (1) vs the rest (0); the original class is kept as the group. Train/val/test are a
seeded stratified split by original class, or (``data.cv_folds``) one fold of a stratified k-fold
cross-validation over all images: with 637 images a single 20 % test split holds about 32 malignant
cases, so only cross-validation tests every image once.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from robustdx.core.config import DataConfig
from robustdx.core.data.base import (
    DataError,
    Records,
    Splits,
    cross_validation_parts,
    list_images,
    make_splits,
    open_rgb,
    stratified_split,
)

FOLDER = "Dataset_BUSI_with_GT"
CLASSES = ("benign", "malignant", "normal")
_MASK = re.compile(r"_mask(_\d+)?$")


def records(root: Path) -> Records:
    """All BUSI images with their masks; label 1 for malignant."""
    base = Path(root) / FOLDER
    if not base.is_dir():
        raise DataError(
            f"no BUSI data at {str(base)!r}. Point data.root at the folder holding {FOLDER}/ "
            f"or make a synthetic copy with `robustdx data synth --format busi --out {root}`"
        )
    loaders, labels, groups, masks, names = [], [], [], [], []
    for g, cls in enumerate(CLASSES):
        files = list_images(base / cls)
        images = [f for f in files if not _MASK.search(f.stem)]
        if not images:
            raise DataError(f"folder {str(base / cls)!r} holds masks but no images")
        for img in images:
            own = [f for f in files if f.stem.startswith(img.stem + "_mask") and _MASK.search(f.stem)]
            if not own:
                raise DataError(f"image {str(img)!r} has no mask ({img.stem}_mask.png expected beside it)")
            loaders.append(partial(open_rgb, img))
            labels.append(int(cls == "malignant"))
            groups.append(g)
            masks.append(own)
            names.append(f"{cls}/{img.name}")
    return Records(loaders, np.asarray(labels), np.asarray(groups), masks, names)


def build(cfg: DataConfig, two_views: bool) -> Splits:
    """The fixed split (``val_fraction`` / ``test_fraction`` of each original class) or, with
    ``cfg.cv_folds``, fold ``cfg.cv_fold`` of a k-fold cross-validation over all images."""
    full = records(cfg.root)
    cv = None
    if cfg.cv_folds is None:
        train_idx, val_idx, test_idx = stratified_split(full.groups, [cfg.val_fraction, cfg.test_fraction], cfg.split_seed)
        parts = {"train": full.subset(train_idx), "val": full.subset(val_idx), "test": full.subset(test_idx)}
    else:
        parts, cv = cross_validation_parts(full, cfg, strata=full.groups)
    return make_splits(parts, cfg, two_views, ["non_malignant", "malignant"], list(CLASSES), cv)
