"""WILDS Camelyon17 through the real ``wilds`` loader.

``wilds.get_dataset("camelyon17", root_dir=root)`` reads ``root/camelyon17_v1.0`` (metadata.csv +
patches) and splits by hospital: 0/3/4 train (rows with ``split == 1`` form ``id_val``),
1 ``val`` (OOD), 2 ``test`` (OOD). We draw label-balanced, seeded subsets (the paper used
5000/5000/10000) and keep the hospital as the group of every patch.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import numpy as np

from robustdx.core.config import DataConfig
from robustdx.core.data.base import DataError, Records, Splits, make_splits

FOLDER = "camelyon17_v1.0"


def load_wilds(root: Path):  # -> wilds Camelyon17Dataset
    """Open the WILDS data set at ``root`` without downloading, with clear errors."""
    folder = Path(root) / FOLDER
    if not (folder / "metadata.csv").is_file():
        raise DataError(
            f"no WILDS Camelyon17 data at {str(folder)!r} (metadata.csv missing). Download it with "
            f"wilds.get_dataset('camelyon17', root_dir=..., download=True) or make a synthetic copy "
            f"with `robustdx data synth --format camelyon17 --out {root}`"
        )
    import wilds

    with warnings.catch_warnings():  # wilds builds tensors from read-only pandas arrays; harmless
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return wilds.get_dataset("camelyon17", root_dir=str(root), download=False)


def _records(ds, split: str) -> Records:
    sub = ds.get_subset(split)
    idx = np.asarray(sub.indices)
    meta = ds.metadata_array[idx].numpy()
    return Records(
        loaders=[partial(_get_input, ds, int(i)) for i in idx],
        labels=ds.y_array[idx].numpy().astype(int),
        groups=meta[:, 0].astype(int),
        names=[ds._input_array[i] for i in idx],
    )


def _get_input(ds, i: int):
    try:
        return ds.get_input(i)
    except (FileNotFoundError, OSError) as err:
        raise DataError(f"cannot read Camelyon17 patch {ds._input_array[i]!r} under {ds.data_dir!r}: {err}") from None


def build(cfg: DataConfig, two_views: bool) -> Splits:
    """Train (hospitals 0/3/4), validation (``cfg.val_split``) and test (hospital 2) splits."""
    ds = load_wilds(cfg.root)
    parts = {"train": _records(ds, "train"), "val": _records(ds, cfg.val_split), "test": _records(ds, "test")}
    return make_splits(parts, cfg, two_views, ["normal", "tumor"], [f"hospital_{h}" for h in range(5)])
