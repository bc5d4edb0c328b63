"""PatchCamelyon in ImageFolder layout: ``root/{train,valid}/{0,1}/*.jpg`` (class 1 = tumour).

``valid`` is the test split; validation is a seeded stratified hold-out of ``train``. PCam carries
no hospital metadata, so every patch is in group 0.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from robustdx.core.config import DataConfig
from robustdx.core.data.base import DataError, Records, Splits, list_images, make_splits, open_rgb, stratified_split

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
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"PCam root {str(root)!r} does not exist (expected train/ and valid/ inside)")
    full = image_folder(root / "train")
    train_idx, val_idx = stratified_split(full.labels, [cfg.val_fraction], cfg.split_seed)
    parts = {"train": full.subset(train_idx), "val": full.subset(val_idx), "test": image_folder(root / "valid")}
    return make_splits(parts, cfg, two_views, ["normal", "tumor"], ["pcam"])
