"""PatchCamelyon in ImageFolder layout: ``root/{train,valid}/{0,1}/*.jpg`` (class 1 = tumour).

``valid`` is the test split; validation is a seeded stratified hold-out of ``train``. With
``data.cv_folds`` the ``train`` folder is instead the pool of a stratified k-fold cross-validation
(test = one fold, ``valid`` unused). PCam carries no hospital metadata, so every patch is in group 0.
"""

from __future__ import annotations

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

CLASSES = ("0", "1")


def image_folder(root: Path) -> Records:
    """Records of an ImageFolder with class folders ``0`` and ``1``."""
    if not root.is_dir():
        raise DataError(f"PCam folder {str(root)!r} does not exist (expected class folders 0/ and 1/)")
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        found = list_images(root / name)
        files += found
        labels += [label] * len(found)
    return Records(
        loaders=[partial(open_rgb, f) for f in files],
        labels=np.asarray(labels),
        groups=np.zeros(len(files), dtype=int),
        names=[str(f) for f in files],
    )


def build(cfg: DataConfig, two_views: bool) -> Splits:
    """Train/val from ``train/`` and test = ``valid/`` or, with ``cfg.cv_folds``, fold ``cfg.cv_fold`` of a
    k-fold cross-validation over ``train/`` (test ids recorded relative to the root)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"PCam root {str(root)!r} does not exist (expected train/ and valid/ inside)")
    full = image_folder(root / "train")
    cv = None
    if cfg.cv_folds is None:
        train_idx, val_idx = stratified_split(full.labels, [cfg.val_fraction], cfg.split_seed)
        parts = {"train": full.subset(train_idx), "val": full.subset(val_idx), "test": image_folder(root / "valid")}
    else:
        parts, cv = cross_validation_parts(full, cfg, root=root)
    return make_splits(parts, cfg, two_views, ["normal", "tumor"], ["pcam"], cv)
