"""Synthetic data sets written in the real on-disk formats, so the real loaders run end to end.

* :func:`write_camelyon17` writes ``camelyon17_v1.0/`` as WILDS ships it (``metadata.csv`` with
  ``patient,node,x_coord,y_coord,tumor,slide,center,split``, ``RELEASE_v1.0.txt`` and
  ``patches/patient_P_node_N/patch_patient_P_node_N_x_X_y_Y.png``). Tissue is pink (eosin) with
  purple nuclei (haematoxylin); a tumour patch has a dense cluster of large dark nuclei inside the
  centre 32×32 region (the PCam/WILDS label rule), and each hospital has its own stain colour and
  brightness: a learnable signal plus a real domain shift.
* :func:`write_busi` writes ``Dataset_BUSI_with_GT/{benign,malignant,normal}/NAME.png`` with
  ``NAME_mask.png`` (and ``NAME_mask_1.png`` for a second lesion): speckled greyscale ultrasound
  with a smooth dark lesion (benign) or an irregular one with an acoustic shadow (malignant).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

EOSIN = np.array([0.93, 0.62, 0.78])
HAEMATOXYLIN = np.array([0.30, 0.16, 0.50])
TRAIN_CENTERS = (0, 3, 4)


def hospital_stain(center: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Colour multiplier and brightness offset of a hospital's staining (fixed per seed)."""
    rng = np.random.default_rng(10_000 + seed * 31 + center)
    return 1 + rng.uniform(-0.18, 0.18, 3), float(rng.uniform(-0.08, 0.08))


def apply_stain(img: np.ndarray, tint: np.ndarray, brightness: float) -> np.ndarray:
    """Recolour a float RGB image in [0, 1] (also used to make drifted test streams)."""
    return np.clip(img * tint + brightness, 0, 1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0


def _discs(yy: np.ndarray, xx: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    out = np.zeros(yy.shape, dtype=np.float32)
    for (cy, cx), r in zip(centres, radii, strict=True):
        out = np.maximum(out, np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1))
    return out


def histology_patch(rng: np.random.Generator, tumor: bool, size: int = 96) -> np.ndarray:
    """One RGB patch in [0, 1] (before the hospital stain)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    tissue = 0.75 + 0.25 * _smooth_noise(rng, size, 6)
    img = EOSIN[None, None, :] * tissue[..., None]
    n_bg = int(rng.integers(6, 14))
    nuclei = _discs(yy, xx, rng.uniform(0, size, (n_bg, 2)), rng.uniform(1.2, 2.5, n_bg))
    if tumor:
        lo, hi = size / 2 - 16 * size / 96, size / 2 + 16 * size / 96
        n_t = int(rng.integers(10, 18))
        nuclei = np.maximum(nuclei, _discs(yy, xx, rng.uniform(lo, hi, (n_t, 2)), rng.uniform(2.5, 4.0, n_t) * size / 96))
    img = img * (1 - nuclei[..., None]) + HAEMATOXYLIN[None, None, :] * nuclei[..., None]
    img = img + rng.normal(0, 0.025, img.shape)
    return np.clip(img, 0, 1)


def _to_png(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if img.ndim == 2 else "RGB"
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), mode=mode).save(path)


def write_camelyon17(
    root: Path | str,
    per_class: int = 40,
    size: int = 96,
    seed: int = 0,
    patients_per_center: int = 2,
    id_val_fraction: float = 0.1,
) -> Path:
    """Write a WILDS-format Camelyon17 copy with 5 hospitals under ``root``; returns the data folder.

    Args:
        per_class: patches per class *per hospital* (so 10·per_class patches in all).
        size: patch side in pixels (WILDS uses 96).
        patients_per_center: patients (each one node, one slide) per hospital.
        id_val_fraction: share of train-hospital rows marked ``split=1`` (WILDS ``id_val``).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "camelyon17_v1.0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "RELEASE_v1.0.txt").write_text("robustdx synthetic Camelyon17 (WILDS v1.0 layout)\n")
    rows = []
    for center in range(5):
        tint, bright = hospital_stain(center, seed)
        for k in range(2 * per_class):
            tumor = k % 2
            p = center * patients_per_center + (k // 2) % patients_per_center
            patient, node, slide = f"{p:03d}", center % 5, p
            x, y = 100 + 96 * k, 200 + 96 * (k % 7)
            img = apply_stain(histology_patch(rng, bool(tumor), size), tint, bright)
            _to_png(
                img,
                folder / "patches" / f"patient_{patient}_node_{node}" / f"patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png",
            )
            split = int(center in TRAIN_CENTERS and rng.random() < id_val_fraction)
            rows.append(
                dict(patient=patient, node=node, x_coord=x, y_coord=y, tumor=tumor, slide=slide, center=center, split=split)
            )
    pd.DataFrame(rows).to_csv(folder / "metadata.csv")
    return folder


def _lesion(rng: np.random.Generator, h: int, w: int, malignant: bool) -> tuple[np.ndarray, tuple[float, float, float]]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35 * h, 0.6 * h), rng.uniform(0.3 * w, 0.7 * w)
    r = rng.uniform(0.12, 0.2) * min(h, w)
    ang = np.arctan2(yy - cy, xx - cx)
    radius = r * (1 + 0.12 * np.sin(2 * ang + rng.uniform(0, 6)))
    if malignant:  # spiculated margin
        radius = radius * (1 + 0.25 * np.sin(7 * ang + rng.uniform(0, 6)) + 0.1 * np.sin(13 * ang))
    return (np.hypot(yy - cy, xx - cx) <= radius).astype(np.float32), (cy, cx, r)


def ultrasound_image(
    rng: np.random.Generator, kind: str, h: int = 96, w: int = 128, second_lesion: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A speckled greyscale image in [0, 1] and its lesion masks (none for ``normal``)."""
    base = (
        0.45 + 0.2 * np.asarray(Image.fromarray((rng.random((6, 8)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)) / 255
    )
    depth = np.linspace(1.0, 0.7, h)[:, None]
    img = base * depth
    masks: list[np.ndarray] = []
    if kind != "normal":
        for _ in range(2 if second_lesion else 1):
            m, (cy, cx, r) = _lesion(rng, h, w, kind == "malignant")
            img = img * (1 - 0.75 * m)
            if kind == "malignant":  # posterior acoustic shadow
                yy, xx = np.mgrid[0:h, 0:w]
                shadow = ((yy > cy + r) & (np.abs(xx - cx) < 0.8 * r)).astype(np.float32)
                img = img * (1 - 0.35 * shadow)
            masks.append(m)
    speckle = rng.rayleigh(0.35, (h, w))
    return np.clip(img * speckle / 0.44, 0, 1), masks


def write_busi(
    root: Path | str,
    n_benign: int = 30,
    n_malignant: int = 30,
    n_normal: int = 15,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
) -> Path:
    """Write a BUSI-layout copy under ``root``; every 10th benign image has two lesions."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "Dataset_BUSI_with_GT"
    for kind, n in (("benign", n_benign), ("malignant", n_malignant), ("normal", n_normal)):
        for i in range(1, n + 1):
            img, masks = ultrasound_image(rng, kind, height, width, second_lesion=kind == "benign" and i % 10 == 0)
            stem = f"{kind} ({i})"
            _to_png(img, folder / kind / f"{stem}.png")
            for j, m in enumerate(masks or [np.zeros((height, width), np.float32)]):
                _to_png(m, folder / kind / (f"{stem}_mask.png" if j == 0 else f"{stem}_mask_{j}.png"))
    return folder
