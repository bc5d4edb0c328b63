"""Shared pieces of the data sets: errors, the image data set, seeded balanced subsets, splits and
stratified k-fold cross-validation.

Every data set yields ``(image, label, group)`` — image ``[3, H, W]`` float in [0, 1] (or
``[2, 3, H, W]`` with two views), integer label, integer group (hospital for Camelyon17, original
BUSI class, 0 for PCam) — and, with ``with_masks=True`` (BUSI), the lesion mask ``[1, H, W]`` too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, TensorDataset
from torchvision import tv_tensors

from robustdx.core.config import DataConfig
from robustdx.core.data.transforms import TwoViews, eval_transform, train_transform
from robustdx.core.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def open_rgb(path: Path | str) -> Image.Image:
    """Open an image as RGB, raising :class:`DataError` naming the file when it is unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {str(path)!r}: {err}") from None


def open_mask(paths: Sequence[Path], size: tuple[int, int]) -> Image.Image:
    """Union of binary masks (BUSI ships one file per lesion) as an 'L' image of ``size``."""
    union = np.zeros((size[1], size[0]), dtype=bool)
    for p in paths:
        try:
            with Image.open(p) as m:
                arr = np.asarray(m.convert("L").resize(size, Image.NEAREST)) > 127
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"cannot read mask {str(p)!r}: {err}") from None
        union |= arr
    return Image.fromarray((union * 255).astype(np.uint8), mode="L")


@dataclass
class Records:
    """Image locations and their labels/groups, before any transform."""

    loaders: list[Callable[[], Image.Image]]
    labels: np.ndarray
    groups: np.ndarray
    mask_paths: list[list[Path]] | None = None
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Records:
        idx = np.asarray(idx, dtype=int)
        return Records(
            loaders=[self.loaders[i] for i in idx],
            labels=self.labels[idx],
            groups=self.groups[idx],
            mask_paths=None if self.mask_paths is None else [self.mask_paths[i] for i in idx],
            names=[self.names[i] for i in idx] if self.names else [],
        )


class ImageDataset(Dataset):
    """A transformed view of :class:`Records`.

    Args:
        records: where the images are.
        transform: a v2 transform (or :class:`TwoViews`) applied to each image (and its mask).
        with_masks: also return the lesion mask (BUSI); raises if the records have none.
    """

    def __init__(self, records: Records, transform: Callable[..., Any], with_masks: bool = False) -> None:
        if with_masks and records.mask_paths is None:
            raise DataError("this data set has no masks (with_masks=True is for BUSI)")
        self.records = records
        self.transform = transform
        self.with_masks = with_masks

    @property
    def labels(self) -> np.ndarray:
        return self.records.labels

    @property
    def groups(self) -> np.ndarray:
        return self.records.groups

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        image = self.records.loaders[i]()
        label, group = int(self.records.labels[i]), int(self.records.groups[i])
        if not self.with_masks:
            return self.transform(image), label, group
        assert self.records.mask_paths is not None
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(open_mask(self.records.mask_paths[i], image.size)) > 0)[None])
        x, m = self.transform(image, mask)
        return x, label, group, m.to(torch.float32)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The integer labels of a data set without loading its images: ``.labels`` (:class:`ImageDataset`),
    the second tensor of a ``TensorDataset``, else the second element of every item."""
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1].cpu().numpy()
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]
    return np.asarray(labels, dtype=int)


def balanced_indices(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A seeded, label-balanced random subset of ``n`` indices (all indices, shuffled, when ``n`` is None).

    When a class has fewer than ``n / n_classes`` items, every class is cut to the smallest class
    size, so the subset stays balanced (the paper's subsets were taken unshuffled: weakness 5).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if n is None:
        return rng.permutation(len(labels))
    classes = np.unique(labels)
    per_class = n // len(classes)
    smallest = min(int((labels == c).sum()) for c in classes)
    per_class = min(per_class, smallest)
    if per_class == 0:
        raise DataError(f"cannot draw a label-balanced subset of {n}: class counts {np.bincount(labels).tolist()}")
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return rng.permutation(np.concatenate(picked))


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices by label into parts of the given fractions (the rest is the first part)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.cumsum([round(f * len(idx)) for f in fractions])
        pieces = np.split(idx, cuts)
        parts[0].extend(pieces[-1])
        for k, piece in enumerate(pieces[:-1]):
            parts[k + 1].extend(piece)
    return [rng.permutation(np.asarray(p, dtype=int)) for p in parts]


def stratified_folds(labels: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """``k`` disjoint, seeded folds of all indices, stratified by label (and by group within a label).

    Items are ordered by (label, group) with a seeded shuffle inside each stratum and dealt to the folds
    in turn, so every run of that order (a stratum, or all strata of one label) is spread over the folds
    within one item: per fold, each class and each group differs from its share by less than one.

    Raises:
        DataError: fewer items than folds.

    Example:
        >>> [len(f) for f in stratified_folds(np.array([0] * 6 + [1] * 4), 3, seed=0)]
        [4, 3, 3]
    """
    labels = np.asarray(labels)
    if len(labels) < k:
        raise DataError(f"cannot split {len(labels)} items into cv_folds={k} folds; use at most {len(labels)} folds")
    strata = np.stack([labels, np.zeros_like(labels) if groups is None else np.asarray(groups)], 1)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero((strata == s).all(1))) for s in np.unique(strata, axis=0)])
    return [np.sort(order[f::k]) for f in range(k)]


@dataclass(frozen=True)
class CrossValidation:
    """Which fold of a k-fold cross-validation a :class:`Splits` is, and the ids of its test items."""

    folds: int
    fold: int
    test_ids: list[str]

    def card(self) -> dict[str, Any]:
        """What the data card records: the fold, and the sorted test ids with their SHA-256 (compare folds by it)."""
        ids = sorted(self.test_ids)
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        return {"cv_folds": self.folds, "cv_fold": self.fold, "test_ids_sha256": digest, "test_ids": ids}


def cross_validation_parts(
    pool: Records, cfg: DataConfig, strata: np.ndarray | None = None, root: Path | None = None
) -> tuple[dict[str, Records], CrossValidation]:
    """Train / val / test of fold ``cfg.cv_fold`` of ``cfg.cv_folds`` over the labelled ``pool``.

    Test is the fold (:func:`stratified_folds` from ``cfg.split_seed``, by label and ``strata``);
    validation is a ``cfg.val_fraction`` share of the other folds, stratified the same way; train is
    the rest. Across the k folds every item of ``pool`` is tested exactly once.

    Args:
        pool: every labelled item (BUSI: all images; PCam: train/).
        cfg: needs ``cv_folds`` set.
        strata: a finer stratification within each label (BUSI: the original class).
        root: item names under it are recorded relative to it (machine-independent ids).
    """
    if cfg.cv_folds is None:
        raise DataError("cross_validation_parts needs data.cv_folds (the number of folds, e.g. 5)")
    folds = stratified_folds(pool.labels, cfg.cv_folds, cfg.split_seed, strata)
    rest = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != cfg.cv_fold]))
    by = pool.labels if strata is None else strata
    train_idx, val_idx = stratified_split(by[rest], [cfg.val_fraction], cfg.split_seed)
    if len(val_idx) == 0:
        raise DataError(
            f"val_fraction={cfg.val_fraction} of the {len(rest)} items outside test fold {cfg.cv_fold} rounds to no "
            f"validation item in any class; raise data.val_fraction or use fewer cv_folds"
        )
    test = pool.subset(folds[cfg.cv_fold])
    parts = {"train": pool.subset(rest[train_idx]), "val": pool.subset(rest[val_idx]), "test": test}
    return parts, CrossValidation(cfg.cv_folds, cfg.cv_fold, [_item_id(n, root) for n in test.names])


def _item_id(name: str, root: Path | None) -> str:
    """``name`` relative to ``root`` when it is a path under it (so ids do not depend on where the data lives)."""
    path = Path(name)
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return name


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; :class:`DataError` when there are none."""
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def make_splits(
    parts: dict[str, Records],
    cfg: DataConfig,
    two_views: bool,
    class_names: list[str],
    group_names: list[str],
    cv: CrossValidation | None = None,
) -> Splits:
    """Draw the configured label-balanced subsets of train/val/test and attach the transforms
    (``cv``: the cross-validation fold the parts are, recorded in the data card)."""
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    picked: dict[str, Records] = {}
    for k, (name, rec) in enumerate(parts.items()):
        if len(rec) == 0:
            raise DataError(f"the {name} split is empty")
        picked[name] = rec.subset(balanced_indices(rec.labels, sizes[name], cfg.split_seed + k))
    train_t = train_transform(cfg.image_size, cfg.augment)
    eval_t = eval_transform(cfg.image_size)
    return Splits(
        train=ImageDataset(picked["train"], TwoViews(train_t) if two_views else train_t),
        val=ImageDataset(picked["val"], eval_t),
        test=ImageDataset(picked["test"], eval_t),
        train_eval=ImageDataset(picked["train"], eval_t),
        class_names=class_names,
        group_names=group_names,
        cv=cv,
    )


@dataclass
class Splits:
    """Train / validation / test data sets of one configuration, plus what describes them.

    ``train_eval`` is the training subset with the eval transform (reference embeddings, centroid
    accuracy of SupCon encoders); ``cv`` says which cross-validation fold this is (None: fixed split).
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    train_eval: ImageDataset
    class_names: list[str]
    group_names: list[str]
    cv: CrossValidation | None = None
    recent: ImageDataset | None = None  # held-out clinician-labelled production images (a data snapshot's)
    snapshot: dict[str, Any] | None = None  # the data snapshot trained on: id, feedback images, recent, until

    def card(self) -> dict[str, Any]:
        """The data card stored in bundles: counts per split, class and group, and the cross-validation
        fold with its test ids when there is one."""
        out: dict[str, Any] = {"classes": self.class_names, "groups": self.group_names, "splits": {}}
        if self.cv is not None:
            out.update(self.cv.card())
        out["snapshot"] = self.snapshot
        for name in ("train", "val", "test", "recent"):
            ds: ImageDataset | None = getattr(self, name)
            if ds is None:
                continue
            out["splits"][name] = {
                "n": len(ds),
                "per_class": np.bincount(ds.labels, minlength=len(self.class_names)).tolist(),
                "per_group": {str(g): int((ds.groups == g).sum()) for g in np.unique(ds.groups)},
            }
        return out
