"""Shared split machinery (core/data/base.py): stratified k folds, the cross-validation parts and what
the data card records of them, and reading a data set's labels without its images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from robustdx.core.config import DataConfig
from robustdx.core.data import DataError, Records, dataset_labels, stratified_folds
from robustdx.core.data.base import CrossValidation, cross_validation_parts

pytestmark = pytest.mark.data


def _records(labels: list[int], groups: list[int] | None = None, root: str = "/data/set") -> Records:
    n = len(labels)
    return Records(
        loaders=[lambda: None] * n,
        labels=np.asarray(labels),
        groups=np.zeros(n, dtype=int) if groups is None else np.asarray(groups),
        names=[f"{root}/train/{y}/{i}.png" for i, y in enumerate(labels)],
    )


# two labels, label 0 made of two groups (as BUSI's benign + normal): 37 / 11 / 23 items
LABELS = np.array([0] * 37 + [1] * 23 + [0] * 11)
GROUPS = np.array([0] * 37 + [1] * 23 + [2] * 11)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_folds_partition_the_items_and_keep_every_class_and_group_within_one(k: int) -> None:
    folds = stratified_folds(LABELS, k, seed=0, groups=GROUPS)
    assert len(folds) == k
    every = np.concatenate(folds)
    assert sorted(every.tolist()) == list(range(len(LABELS))), "each item in exactly one fold"
    for values in (LABELS, GROUPS):
        for c in np.unique(values):
            per_fold = [int((values[f] == c).sum()) for f in folds]
            assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_folds_are_seeded() -> None:
    a, b = stratified_folds(LABELS, 5, seed=3), stratified_folds(LABELS, 5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = stratified_folds(LABELS, 5, seed=4)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_more_folds_than_items_is_refused_with_the_limit() -> None:
    with pytest.raises(DataError, match=r"cannot split 3 items into cv_folds=5 folds; use at most 3"):
        stratified_folds(np.array([0, 1, 0]), 5, seed=0)


def test_cross_validation_parts_test_each_item_once_with_a_stratified_validation_share() -> None:
    pool = _records(LABELS.tolist(), GROUPS.tolist())
    tested: list[str] = []
    for fold in range(4):
        cfg = DataConfig(dataset="pcam", cv_folds=4, cv_fold=fold, val_fraction=0.2)
        parts, cv = cross_validation_parts(pool, cfg, strata=pool.groups, root=Path("/data/set"))
        names = {k: set(r.names) for k, r in parts.items()}
        assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
        assert len(names["train"] | names["val"] | names["test"]) == len(pool)
        rest = len(pool) - len(names["test"])
        for g in np.unique(GROUPS):  # the validation share is stratified too
            n_g = int((parts["train"].groups == g).sum() + (parts["val"].groups == g).sum())
            assert (parts["val"].groups == g).sum() == round(0.2 * n_g), g
        assert abs(len(names["val"]) - 0.2 * rest) <= len(np.unique(GROUPS))
        assert (cv.folds, cv.fold) == (4, fold)
        assert sorted(cv.test_ids) == sorted(n.removeprefix("/data/set/") for n in names["test"]), "ids relative to the root"
        tested += cv.test_ids
    assert sorted(tested) == sorted(n.removeprefix("/data/set/") for n in pool.names)


def test_cross_validation_parts_need_cv_folds() -> None:
    with pytest.raises(DataError, match="needs data.cv_folds"):
        cross_validation_parts(_records([0, 1, 0, 1]), DataConfig(dataset="pcam"))


def test_a_validation_share_that_rounds_to_nothing_names_the_fix() -> None:
    cfg = DataConfig(dataset="pcam", cv_folds=2, val_fraction=0.1)
    with pytest.raises(DataError, match=r"val_fraction=0.1 of the 4 items outside test fold 0 .*raise data.val_fraction"):
        cross_validation_parts(_records([0, 1] * 4), cfg)


def test_cross_validation_card_hashes_the_sorted_ids() -> None:
    card = CrossValidation(5, 2, ["b.png", "a.png"]).card()
    assert card["cv_folds"] == 5 and card["cv_fold"] == 2
    assert card["test_ids"] == ["a.png", "b.png"]
    assert card["test_ids_sha256"] == CrossValidation(5, 2, ["a.png", "b.png"]).card()["test_ids_sha256"]
    assert card["test_ids_sha256"] != CrossValidation(5, 2, ["a.png", "c.png"]).card()["test_ids_sha256"]


class _Items(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return torch.zeros(1), [1, 0, 1][i], 0


def test_dataset_labels_of_every_kind_of_data_set() -> None:
    tensors = TensorDataset(torch.zeros(4, 1), torch.tensor([1, 1, 0, 1]))
    assert dataset_labels(tensors).tolist() == [1, 1, 0, 1]
    assert dataset_labels(_Items()).tolist() == [1, 0, 1]
