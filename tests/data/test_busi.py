"""BUSI: original release layout with lesion masks, synthetic and real."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustdx.core.config import DataConfig
from robustdx.core.data import DataError, ImageDataset, Splits, build_splits, dataset_labels, stratified_split
from robustdx.core.data.base import open_mask
from robustdx.core.data.busi import CLASSES, FOLDER, records
from robustdx.core.data.transforms import eval_transform, train_transform
from tests.support.paths import SHARED_DATA

pytestmark = pytest.mark.data

REAL_BUSI = SHARED_DATA / "busi"
N_SYN = {"benign": 20, "malignant": 20, "normal": 10}


def _copy(busi_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "busi"
    shutil.copytree(busi_root, root)
    return root


def _binary(arr: np.ndarray) -> bool:
    return bool(np.isin(arr, (0.0, 1.0)).all())


@pytest.fixture(params=["synthetic", "real"])
def any_busi(request: pytest.FixtureRequest) -> Path:
    """The synthetic BUSI copy, and the real one when ../shared/data/busi holds it."""
    if request.param == "synthetic":
        return request.getfixturevalue("busi_root")
    if not (REAL_BUSI / FOLDER).is_dir():
        pytest.skip("real BUSI not present under shared/data")
    return REAL_BUSI


def _fold(root: Path, k: int, fold: int, seed: int = 0) -> Splits:
    return build_splits(DataConfig(dataset="busi", root=root, image_size=32, cv_folds=k, cv_fold=fold, split_seed=seed))


def _names(s: Splits) -> dict[str, set[str]]:
    return {k: set(getattr(s, k).records.names) for k in ("train", "val", "test")}


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_layout_and_masks_beside_images(busi_root: Path) -> None:
    base = busi_root / FOLDER
    assert sorted(p.name for p in base.iterdir()) == sorted(CLASSES)
    for cls, n in N_SYN.items():
        files = {p.name for p in (base / cls).iterdir()}
        images = sorted(f for f in files if "_mask" not in f)
        assert images == sorted(f"{cls} ({i}).png" for i in range(1, n + 1))
        for i in range(1, n + 1):
            assert f"{cls} ({i})_mask.png" in files
            two = cls == "benign" and i % 10 == 0
            assert (f"{cls} ({i})_mask_1.png" in files) == two, (cls, i)
        with Image.open(base / cls / images[0]) as im, Image.open(base / cls / f"{cls} (1)_mask.png") as m:
            assert im.size == m.size == (64, 48)
            assert m.mode == "L"


def test_records_pair_each_image_with_its_own_masks(busi_root: Path) -> None:
    rec = records(busi_root)
    assert len(rec) == sum(N_SYN.values())
    assert rec.mask_paths is not None
    for name, masks in zip(rec.names, rec.mask_paths, strict=True):
        cls, fname = name.split("/")
        stem = Path(fname).stem
        assert {m.name for m in masks} <= {f"{stem}_mask.png", f"{stem}_mask_1.png"}
        assert all(m.parent.name == cls for m in masks)
    n_masks = {n: len(m) for n, m in zip(rec.names, rec.mask_paths, strict=True)}
    assert n_masks["benign/benign (10).png"] == n_masks["benign/benign (20).png"] == 2
    assert n_masks["benign/benign (1).png"] == 1  # "benign (1)" does not pick up "benign (10)_mask"


def test_build_splits_stratified_by_class(busi_root: Path) -> None:
    s = build_splits(DataConfig(dataset="busi", root=busi_root, image_size=32))
    assert s.group_names == ["benign", "malignant", "normal"]
    assert s.class_names == ["non_malignant", "malignant"]
    names = {k: set(getattr(s, k).records.names) for k in ("train", "val", "test")}
    assert not names["train"] & names["val"]
    assert not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    assert sum(len(v) for v in names.values()) == sum(N_SYN.values())
    for split in ("train", "val", "test"):
        ds = getattr(s, split)
        assert set(np.unique(ds.groups)) == {0, 1, 2}, split
        np.testing.assert_array_equal(ds.labels, (ds.groups == 1).astype(int))
        for g, cls in enumerate(CLASSES):
            assert all(n.startswith(cls + "/") for n, gg in zip(ds.records.names, ds.groups, strict=True) if gg == g)
    # stratified: each class is split in (about) the configured fractions
    for g, (cls, n) in enumerate(N_SYN.items()):
        assert abs((s.val.groups == g).sum() - 0.15 * n) <= 1, cls
        assert abs((s.test.groups == g).sum() - 0.2 * n) <= 1, cls
    x, y, g = s.train[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_masks_returned_with_images(busi_root: Path) -> None:
    rec = records(busi_root)
    ds = ImageDataset(rec, eval_transform(32), with_masks=True)
    for i in range(len(ds)):
        x, y, g, mask = ds[i]
        assert x.shape == (3, 32, 32)
        assert mask.shape == (1, 32, 32)
        assert mask.dtype == torch.float32
        assert _binary(mask.numpy()), rec.names[i]
        if CLASSES[g] == "normal":
            assert mask.sum() == 0, rec.names[i]
        else:
            assert mask.sum() > 0, rec.names[i]
        assert y == int(CLASSES[g] == "malignant")


def _flips(t: torch.Tensor) -> list[torch.Tensor]:
    """The four flips of a ``[..., H, W]`` tensor: none, horizontal, vertical, both."""
    return [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def test_masks_follow_geometric_augmentation(busi_root: Path) -> None:
    """Random flips move image and mask together (colour jitter leaves the mask alone)."""
    rec = records(busi_root)
    lesions = np.asarray([i for i, g in enumerate(rec.groups) if CLASSES[g] != "normal"][:12])
    plain = ImageDataset(rec.subset(lesions), eval_transform(32), with_masks=True)
    aug = ImageDataset(rec.subset(lesions), train_transform(32, augment=True), with_masks=True)
    torch.manual_seed(0)
    flipped = 0
    for i in range(len(aug)):
        x0, _, _, m0 = plain[i]
        x, _, _, m = aug[i]
        assert _binary(m.numpy())
        # which flip did the image get? (correlation is blind to brightness/contrast jitter)
        scores = [_corr(x.mean(0), f) for f in _flips(x0.mean(0))]
        k = int(np.argmax(scores))
        assert scores[k] > 0.9, scores
        assert torch.equal(m, _flips(m0)[k]), (aug.records.names[i], k)
        flipped += k != 0
    assert flipped > 0  # the check above saw real flips


def test_mask_union_covers_each_mask(busi_root: Path) -> None:
    folder = busi_root / FOLDER / "benign"
    m0, m1 = folder / "benign (10)_mask.png", folder / "benign (10)_mask_1.png"
    size = (64, 48)
    a = np.asarray(open_mask([m0], size)) > 0
    b = np.asarray(open_mask([m1], size)) > 0
    u = np.asarray(open_mask([m0, m1], size)) > 0
    assert a.sum() > 0 and b.sum() > 0
    assert u.sum() >= a.sum() and u.sum() >= b.sum()
    np.testing.assert_array_equal(u, a | b)
    small = np.asarray(open_mask([m0, m1], (32, 24)))
    assert small.shape == (24, 32)
    assert set(np.unique(small)) <= {0, 255}


def test_image_without_mask_is_named(busi_root: Path, tmp_path: Path) -> None:
    root = _copy(busi_root, tmp_path)
    (root / FOLDER / "malignant" / "malignant (3)_mask.png").unlink()
    with pytest.raises(DataError) as err:
        records(root)
    assert "malignant (3).png" in str(err.value)


def test_empty_class_folder_is_named(busi_root: Path, tmp_path: Path) -> None:
    root = _copy(busi_root, tmp_path)
    folder = root / FOLDER / "normal"
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(DataError) as err:
        build_splits(DataConfig(dataset="busi", root=root, image_size=32))
    assert str(folder) in str(err.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_splits(DataConfig(dataset="busi", root=tmp_path / "absent", image_size=32))
    assert str(tmp_path / "absent") in str(err.value)


def test_without_cv_folds_the_split_is_the_fixed_hold_out(busi_root: Path) -> None:
    """cv_folds unset keeps the val_fraction / test_fraction split by original class, and the card has no fold."""
    s = build_splits(DataConfig(dataset="busi", root=busi_root, image_size=32, split_seed=3))
    full = records(busi_root)
    want = stratified_split(full.groups, [0.15, 0.2], 3)
    for split, idx in zip(("train", "val", "test"), want, strict=True):
        assert sorted(getattr(s, split).records.names) == sorted(full.names[i] for i in idx), split
    assert not {"cv_folds", "cv_fold", "test_ids", "test_ids_sha256"} & set(s.card())


# ------------------------------------------------------------------------- cross-validation (both)


K = 5


def test_cv_every_image_is_tested_once_in_disjoint_splits(any_busi: Path) -> None:
    everything = set(records(any_busi).names)
    tested: list[str] = []
    for fold in range(K):
        names = _names(_fold(any_busi, K, fold))
        assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
        assert names["train"] | names["val"] | names["test"] == everything
        tested += names["test"]
    assert sorted(tested) == sorted(everything)


def test_cv_folds_keep_class_and_group_proportions(any_busi: Path) -> None:
    full = records(any_busi)
    for fold in range(K):
        s = _fold(any_busi, K, fold)
        for values, test in ((full.labels, s.test.labels), (full.groups, s.test.groups)):
            for c in np.unique(values):
                assert abs((test == c).sum() - (values == c).sum() / K) < 1, (fold, c)
        for g in range(len(CLASSES)):  # validation: a stratified val_fraction of the other folds
            rest = (s.train.groups == g).sum() + (s.val.groups == g).sum()
            assert abs((s.val.groups == g).sum() - 0.15 * rest) <= 0.5, (fold, g)
        np.testing.assert_array_equal(dataset_labels(s.train), (s.train.groups == 1).astype(int))


def test_cv_folds_are_seeded(any_busi: Path) -> None:
    a, b = _names(_fold(any_busi, K, 1, seed=7)), _names(_fold(any_busi, K, 1, seed=7))
    assert a == b
    other = _names(_fold(any_busi, K, 1, seed=8))
    assert other["test"] != a["test"]


def test_cv_card_records_the_fold_and_its_test_items(any_busi: Path) -> None:
    hashes = set()
    for fold in range(K):
        s = _fold(any_busi, K, fold)
        card = s.card()
        assert (card["cv_folds"], card["cv_fold"]) == (K, fold)
        assert card["test_ids"] == sorted(s.test.records.names)  # BUSI ids: "class/file.png"
        assert card["splits"]["test"]["n"] == len(card["test_ids"])
        hashes.add(card["test_ids_sha256"])
    assert len(hashes) == K


def test_cv_with_two_views_gives_the_same_folds(busi_root: Path) -> None:
    cfg = DataConfig(dataset="busi", root=busi_root, image_size=32, cv_folds=3, cv_fold=2)
    one, two = build_splits(cfg), build_splits(cfg, two_views=True)
    assert _names(one) == _names(two)
    assert two.train[0][0].shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------------------- real


@pytest.mark.skipif(not (SHARED_DATA / "busi" / FOLDER).is_dir(), reason="real BUSI not present under shared/data")
def test_real_busi_counts_and_masks() -> None:
    rec = records(REAL_BUSI)
    assert len(rec) == 637
    assert np.bincount(rec.groups).tolist() == [368, 161, 108]
    assert int(rec.labels.sum()) == 161
    np.testing.assert_array_equal(rec.labels, (rec.groups == 1).astype(int))
    assert rec.mask_paths is not None and all(rec.mask_paths)
    malignant = np.flatnonzero(rec.labels == 1)
    pick = np.random.default_rng(0).choice(malignant, 10, replace=False)
    ds = ImageDataset(rec.subset(pick), eval_transform(32), with_masks=True)
    for i in range(len(ds)):
        x, y, g, mask = ds[i]
        assert y == 1 and g == 1
        assert x.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
        assert _binary(mask.numpy())
        assert mask.sum() > 0, ds.records.names[i]
