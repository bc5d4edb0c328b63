"""Synthetic WILDS Camelyon17: on-disk format, the real wilds loader, splits, subsets and errors."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from robustdx.core.config import DataConfig
from robustdx.core.data import DataError, build_splits
from robustdx.core.data.synthetic import write_camelyon17

pytestmark = pytest.mark.data

COLUMNS = ["patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]
_PATIENT = re.compile(r"patch_patient_(\d+)_node_")


def _folder(root: Path) -> Path:
    return root / "camelyon17_v1.0"


def _metadata(root: Path) -> pd.DataFrame:
    return pd.read_csv(_folder(root) / "metadata.csv", index_col=0, dtype={"patient": "str"})


def _patch_path(root: Path, row) -> Path:
    p, n = row.patient, row.node
    return _folder(root) / "patches" / f"patient_{p}_node_{n}" / f"patch_patient_{p}_node_{n}_x_{row.x_coord}_y_{row.y_coord}.png"


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _patients(names: list[str]) -> set[str]:
    out = set()
    for n in names:
        m = _PATIENT.search(n)
        assert m is not None, f"unexpected patch name {n!r}"
        out.add(m.group(1))
    return out


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="camelyon17", root=root, image_size=16, **kw)


# --------------------------------------------------------------------------------------------- format


def test_layout_release_file_and_metadata_columns(camelyon_root: Path) -> None:
    folder = _folder(camelyon_root)
    assert (folder / "RELEASE_v1.0.txt").is_file()
    header = (folder / "metadata.csv").read_text().splitlines()[0].split(",")
    assert header[0] == ""  # unnamed index column, as WILDS ships it
    assert header[1:] == COLUMNS
    df = _metadata(camelyon_root)
    assert list(df.columns) == COLUMNS
    assert len(df) == 5 * 2 * 24
    assert sorted(df.center.unique()) == [0, 1, 2, 3, 4]
    assert set(df.tumor.unique()) == {0, 1}
    assert set(df.split.unique()) <= {0, 1}
    assert (df.loc[df.center.isin([1, 2]), "split"] == 0).all()  # id_val rows only in train hospitals


def test_patient_is_zero_padded_string(camelyon_root: Path) -> None:
    df = _metadata(camelyon_root)
    assert all(isinstance(p, str) and re.fullmatch(r"\d{3}", p) for p in df.patient)


def test_every_row_has_its_48px_rgb_png(camelyon_root: Path) -> None:
    df = _metadata(camelyon_root)
    pngs = set((_folder(camelyon_root) / "patches").rglob("*.png"))
    expected = {_patch_path(camelyon_root, row) for row in df.itertuples()}
    assert len(expected) == len(df)  # one distinct file per row
    assert expected == pngs
    for path in sorted(expected):
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.mode == "RGB"
            assert im.size == (48, 48)


def test_labels_balanced_per_hospital(camelyon_root: Path) -> None:
    counts = _metadata(camelyon_root).groupby(["center", "tumor"]).size()
    assert (counts == 24).all(), counts


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    a = write_camelyon17(tmp_path / "a", per_class=2, size=24, seed=3)
    b = write_camelyon17(tmp_path / "b", per_class=2, size=24, seed=3)
    c = write_camelyon17(tmp_path / "c", per_class=2, size=24, seed=4)
    assert (a / "metadata.csv").read_bytes() == (b / "metadata.csv").read_bytes()
    files_a = sorted(p.relative_to(a) for p in (a / "patches").rglob("*.png"))
    files_b = sorted(p.relative_to(b) for p in (b / "patches").rglob("*.png"))
    assert files_a == files_b and files_a
    one = files_a[len(files_a) // 2]
    assert (a / one).read_bytes() == (b / one).read_bytes()
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    # a different seed draws different pixels (same file names: coordinates are not random)
    assert (c / one).read_bytes() != (a / one).read_bytes()


# ------------------------------------------------------------------------------------- wilds + splits


def test_real_wilds_loader_reads_the_copy(camelyon_root: Path) -> None:
    wilds = pytest.importorskip("wilds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = wilds.get_dataset("camelyon17", root_dir=str(camelyon_root), download=False)
    assert len(ds) == 240
    x, y, meta = ds[0]
    assert x.size == (48, 48)
    assert int(y) in (0, 1)
    sizes = {s: len(ds.get_subset(s)) for s in ("train", "id_val", "val", "test")}
    df = _metadata(camelyon_root)
    assert sizes["val"] == (df.center == 1).sum()
    assert sizes["test"] == (df.center == 2).sum()
    assert sizes["train"] + sizes["id_val"] == df.center.isin([0, 3, 4]).sum()
    assert sizes["id_val"] == df.split.sum()


def test_build_splits_hospitals(camelyon_root: Path) -> None:
    s = build_splits(_cfg(camelyon_root))
    assert set(np.unique(s.train.groups)) <= {0, 3, 4}
    assert set(np.unique(s.val.groups)) == {1}
    assert set(np.unique(s.test.groups)) == {2}
    assert s.class_names == ["normal", "tumor"]
    for name in ("train", "val", "test"):
        ds = getattr(s, name)
        assert set(np.unique(ds.labels)) == {0, 1}, name
        counts = np.bincount(ds.labels)
        assert counts[0] == counts[1], (name, counts)  # label-balanced subsets
    card = s.card()
    assert card["splits"]["test"]["n"] == len(s.test)


def test_id_val_is_train_hospitals_disjoint_from_train(camelyon_root: Path) -> None:
    s = build_splits(_cfg(camelyon_root, val_split="id_val"))
    assert len(s.val) > 0
    assert set(np.unique(s.val.groups)) <= {0, 3, 4}
    assert not set(s.val.records.names) & set(s.train.records.names)


def test_no_patient_leakage_between_train_and_test(camelyon_root: Path) -> None:
    s = build_splits(_cfg(camelyon_root))
    train_p, test_p, val_p = (_patients(getattr(s, n).records.names) for n in ("train", "test", "val"))
    assert train_p and test_p
    assert not train_p & test_p
    assert not train_p & val_p
    assert not val_p & test_p


def test_balanced_seeded_subsets(camelyon_root: Path) -> None:
    a = build_splits(_cfg(camelyon_root, n_train=20, split_seed=0))
    b = build_splits(_cfg(camelyon_root, n_train=20, split_seed=0))
    c = build_splits(_cfg(camelyon_root, n_train=20, split_seed=1))
    assert len(a.train) == 20
    assert np.bincount(a.train.labels).tolist() == [10, 10]
    assert a.train.records.names == b.train.records.names
    assert sorted(a.train.records.names) != sorted(c.train.records.names)
    assert len(set(a.train.records.names)) == 20  # drawn without replacement


def test_two_view_items_and_eval_items(camelyon_root: Path) -> None:
    s = build_splits(_cfg(camelyon_root, n_train=4, n_val=2, n_test=2), two_views=True)
    torch.manual_seed(0)
    x, y, g = s.train[0]
    assert x.shape == (2, 3, 16, 16)
    assert x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y in (0, 1) and g in (0, 3, 4)
    for ds in (s.val, s.test, s.train_eval):
        xe, ye, _ = ds[0]
        assert xe.shape == (3, 16, 16)
        assert 0.0 <= float(xe.min()) and float(xe.max()) <= 1.0
        assert ye in (0, 1)


# ------------------------------------------------------------------------------------------ content


def test_tumour_centre_darker_than_normal(camelyon_root: Path) -> None:
    df = _metadata(camelyon_root)
    df["centre"] = [_pixels(_patch_path(camelyon_root, r))[16:32, 16:32].mean() for r in df.itertuples()]
    by = df.groupby(["center", "tumor"]).centre.mean().unstack()
    assert df.loc[df.tumor == 1, "centre"].mean() < df.loc[df.tumor == 0, "centre"].mean() - 0.05
    assert (by[1] < by[0]).all(), by  # in every hospital


def test_hospital_stain_shift(camelyon_root: Path) -> None:
    df = _metadata(camelyon_root)
    means = {}
    for h in (0, 2):
        rows = df[df.center == h]
        means[h] = np.stack([_pixels(_patch_path(camelyon_root, r)).mean(axis=(0, 1)) for r in rows.itertuples()])
    between = np.abs(means[0].mean(0) - means[2].mean(0)).max()
    within = max(means[0].std(0).max(), means[2].std(0).max())
    assert between > 3 * within, (between, within)


# ------------------------------------------------------------------------------------------- errors


def test_missing_root_is_a_clear_data_error(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        build_splits(_cfg(root))
    msg = str(err.value)
    assert str(root) in msg
    assert "robustdx data synth" in msg


def test_corrupt_png_names_the_file(camelyon_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(camelyon_root, root)
    df = _metadata(root)
    row = next(df[df.center == 2].itertuples())  # a test-split (hospital 2) patch
    bad = _patch_path(root, row)
    bad.write_bytes(b"not an image")
    s = build_splits(_cfg(root))
    rel = str(bad.relative_to(_folder(root)))
    idx = s.test.records.names.index(rel)
    ok = (idx + 1) % len(s.test)
    assert s.test[ok][0].shape == (3, 16, 16)  # the other patches still read
    with pytest.raises(DataError) as err:
        s.test[idx]
    assert bad.name in str(err.value)
