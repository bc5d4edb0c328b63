"""Data sets: WILDS Camelyon17, PCam, BUSI, and a synthetic generator writing their on-disk formats."""

from __future__ import annotations

from collections.abc import Callable

from robustdx.core.config import DataConfig
from robustdx.core.data import busi, camelyon17, pcam
from robustdx.core.data.base import (
    CrossValidation,
    DataError,
    ImageDataset,
    Records,
    Splits,
    balanced_indices,
    dataset_labels,
    stratified_folds,
    stratified_split,
)
from robustdx.core.registry import Registry

_DATASETS: Registry[Callable[[DataConfig, bool], Splits]] = Registry("dataset")
_DATASETS.register("camelyon17")(camelyon17.build)
_DATASETS.register("pcam")(pcam.build)
_DATASETS.register("busi")(busi.build)


def build_splits(cfg: DataConfig, two_views: bool = False) -> Splits:
    """Train/val/test data sets for ``cfg``; ``two_views`` makes training items SupCon view pairs."""
    splits = _DATASETS.get(str(cfg.dataset))(cfg, two_views)
    if cfg.snapshot is not None:
        from robustdx.core.data.snapshot import with_snapshot

        splits = with_snapshot(splits, cfg.snapshot, cfg.feedback_repeat)
    return splits


def list_datasets() -> list[str]:
    return _DATASETS.list()


__all__ = [
    "CrossValidation",
    "DataError",
    "ImageDataset",
    "Records",
    "Splits",
    "balanced_indices",
    "build_splits",
    "dataset_labels",
    "list_datasets",
    "stratified_folds",
    "stratified_split",
]
