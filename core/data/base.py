"""Shared pieces of the data sets: errors, the image data set, seeded balanced subsets and splits.

Every data set yields ``(image, label, group)`` — image ``[3, H, W]`` float in [0, 1] (or
``[2, 3, H, W]`` with two views), integer label, integer group (hospital for Camelyon17, original
BUSI class, 0 for PCam) — and, with ``with_masks=True`` (BUSI), the lesion mask ``[1, H, W]`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
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


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; :class:`DataError` when there are none."""
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def make_splits(
    parts: dict[str, Records], cfg: DataConfig, two_views: bool, class_names: list[str], group_names: list[str]
) -> Splits:
    """Draw the configured label-balanced subsets of train/val/test and attach the transforms."""
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
    )


@dataclass
class Splits:
    """Train / validation / test data sets of one configuration, plus what describes them.

    ``train_eval`` is the training subset with the eval transform (reference embeddings, centroid
    accuracy of SupCon encoders).
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    train_eval: ImageDataset
    class_names: list[str]
    group_names: list[str]

    def card(self) -> dict[str, Any]:
        """The data card stored in bundles: counts per split, class and group."""
        out: dict[str, Any] = {"classes": self.class_names, "groups": self.group_names, "splits": {}}
        for name in ("train", "val", "test"):
            ds: ImageDataset = getattr(self, name)
            out["splits"][name] = {
                "n": len(ds),
                "per_class": np.bincount(ds.labels, minlength=len(self.class_names)).tolist(),
                "per_group": {str(g): int((ds.groups == g).sum()) for g in np.unique(ds.groups)},
            }
        return out
