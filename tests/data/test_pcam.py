"""PatchCamelyon (ImageFolder layout) and the data-set registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

import robustdx.core.data as data
from robustdx.core.config import ConfigError, DataConfig, parse_config
from robustdx.core.data import DataError, build_splits
from tests.support.paths import SHARED_DATA

pytestmark = pytest.mark.data

REAL_PCAM = SHARED_DATA / "pcam"
VALID = ("busi", "camelyon17", "pcam")


def _write_folder(root: Path, counts: dict[str, dict[str, int]]) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")


# ----------------------------------------------------------------------------------------- real


@pytest.mark.skipif(not (SHARED_DATA / "pcam").is_dir(), reason="real PCam not present under shared/data")
def test_real_pcam_splits() -> None:
    s = build_splits(DataConfig(dataset="pcam", root=REAL_PCAM, image_size=32, n_train=40))
    assert s.group_names == ["pcam"]
    assert len(s.train) == 40
    assert np.bincount(s.train.labels).tolist() == [20, 20]
    # validation: a stratified 15 % hold-out of train/, disjoint from the training subset
    train_names, val_names = set(s.train.records.names), set(s.val.records.names)
    assert not train_names & val_names
    assert all(Path(n).parts[-3] == "train" for n in train_names | val_names)
    assert np.bincount(s.val.labels).tolist() == [300, 300]
    assert len(val_names) == len(s.val)
    for ds in (s.train, s.val):
        for name, y in zip(ds.records.names[:50], ds.labels[:50], strict=True):
            assert Path(name).parent.name == str(y)
    # test: the whole valid/ folder
    assert len(s.test) == 1000
    assert np.bincount(s.test.labels).tolist() == [500, 500]
    assert all(Path(n).parts[-3] == "valid" for n in s.test.records.names)
    assert set(np.unique(np.concatenate([s.train.groups, s.val.groups, s.test.groups]))) == {0}
    for ds in (s.train, s.val, s.test):
        x, y, g = ds[0]
        assert x.shape == (3, 32, 32)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert float(x.max()) > float(x.min())
        assert y in (0, 1) and g == 0


@pytest.mark.skipif(not (SHARED_DATA / "pcam").is_dir(), reason="real PCam not present under shared/data")
def test_real_pcam_split_seed_changes_holdout() -> None:
    a = build_splits(DataConfig(dataset="pcam", root=REAL_PCAM, image_size=32, n_train=10, n_val=10, n_test=10))
    b = build_splits(DataConfig(dataset="pcam", root=REAL_PCAM, image_size=32, n_train=10, n_val=10, n_test=10))
    c = build_splits(DataConfig(dataset="pcam", root=REAL_PCAM, image_size=32, n_train=10, n_val=10, n_test=10, split_seed=5))
    assert a.val.records.names == b.val.records.names
    assert a.train.records.names == b.train.records.names
    assert set(a.val.records.names) != set(c.val.records.names)


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_image_folder_reads(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": {"0": 10, "1": 10}, "valid": {"0": 3, "1": 3}})
    s = build_splits(DataConfig(dataset="pcam", root=tmp_path, image_size=16))
    assert len(s.train) + len(s.val) == 20
    assert len(s.test) == 6
    assert np.bincount(s.val.labels).tolist() == [2, 2]  # round(0.15 * 10) per class
    x, _, _ = s.test[0]
    assert x.shape == (3, 16, 16)


def test_cv_folds_split_the_train_folder_and_leave_valid_out(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": {"0": 20, "1": 10}, "valid": {"0": 3, "1": 3}})
    tested: list[str] = []
    for fold in range(3):
        s = build_splits(DataConfig(dataset="pcam", root=tmp_path, image_size=16, cv_folds=3, cv_fold=fold))
        names = {k: set(getattr(s, k).records.names) for k in ("train", "val", "test")}
        assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
        assert len(names["train"] | names["val"] | names["test"]) == 30
        assert all(Path(n).parts[-3] == "train" for n in set().union(*names.values())), "valid/ is not used"
        assert np.bincount(s.test.labels).tolist() in ([7, 3], [7, 4], [6, 3], [6, 4])
        card = s.card()
        assert (card["cv_folds"], card["cv_fold"]) == (3, fold)
        assert card["test_ids"] == sorted(str(Path(n).relative_to(tmp_path)) for n in names["test"])
        tested += card["test_ids"]
    assert sorted(tested) == sorted(f"train/{c}/{i}.png" for c, n in (("0", 20), ("1", 10)) for i in range(n))


def test_cv_fold_ids_do_not_depend_on_where_the_data_lives(tmp_path: Path) -> None:
    _write_folder(tmp_path / "a", {"train": {"0": 10, "1": 10}, "valid": {"0": 1, "1": 1}})
    _write_folder(tmp_path / "b", {"train": {"0": 10, "1": 10}, "valid": {"0": 1, "1": 1}})
    cards = [build_splits(DataConfig(dataset="pcam", root=tmp_path / r, image_size=16, cv_folds=2)).card() for r in "ab"]
    assert cards[0]["test_ids_sha256"] == cards[1]["test_ids_sha256"]


def test_without_cv_folds_valid_stays_the_test_split(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": {"0": 10, "1": 10}, "valid": {"0": 3, "1": 3}})
    s = build_splits(DataConfig(dataset="pcam", root=tmp_path, image_size=16))
    assert all(Path(n).parts[-3] == "valid" for n in s.test.records.names)
    assert "cv_folds" not in s.card()


@pytest.mark.skipif(not (SHARED_DATA / "pcam").is_dir(), reason="real PCam not present under shared/data")
def test_real_pcam_cv_tests_every_train_patch_once() -> None:
    tested: list[str] = []
    for fold in range(4):
        s = build_splits(DataConfig(dataset="pcam", root=REAL_PCAM, image_size=32, cv_folds=4, cv_fold=fold, split_seed=1))
        assert np.bincount(s.test.labels).tolist() == [500, 500]
        assert not set(s.train.records.names) & set(s.test.records.names)
        tested += s.card()["test_ids"]
    assert len(tested) == len(set(tested)) == 4000
    assert all(t.startswith("train/") for t in tested)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"train": {"0": 4}, "valid": {"0": 2, "1": 2}})
    (tmp_path / "train" / "1").mkdir()
    with pytest.raises(DataError) as err:
        build_splits(DataConfig(dataset="pcam", root=tmp_path, image_size=16))
    assert str(tmp_path / "train" / "1") in str(err.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_splits(DataConfig(dataset="pcam", root=tmp_path / "absent", image_size=16))
    assert str(tmp_path / "absent") in str(err.value)


# ------------------------------------------------------------------------------------- registry


def test_unknown_dataset_in_config_lists_valid_names() -> None:
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset="bogus")
    assert all(name in str(err.value) for name in VALID)
    with pytest.raises(ConfigError) as cerr:
        parse_config({"data": {"dataset": "bogus"}})
    assert "data.dataset" in str(cerr.value)
    assert all(name in str(cerr.value) for name in VALID)


def test_registry_unknown_name_is_key_error_listing_valid() -> None:
    assert data.list_datasets() == list(VALID)
    with pytest.raises(KeyError) as err:
        data._DATASETS.get("bogus")
    msg = str(err.value)
    assert "bogus" in msg
    assert all(name in msg for name in VALID)
    with pytest.raises(KeyError, match="Did you mean 'pcam'"):
        data._DATASETS.get("pcamm")
