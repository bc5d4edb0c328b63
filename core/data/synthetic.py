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
Each writer ends by recording what it wrote (format, parameters, :data:`GENERATOR`) in
``robustdx-synthetic.json`` beside the data (:func:`read_spec`), so a caller can tell a finished set
written with the same settings (reuse it) from one written with other settings, by an older
generator or interrupted half-way (rewrite it) — ``make demo`` must never train on stale data.
"""

from __future__ import annotations

import functools
import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

EOSIN = np.array([0.93, 0.62, 0.78])
HAEMATOXYLIN = np.array([0.30, 0.16, 0.50])
TRAIN_CENTERS = (0, 3, 4)
GENERATOR = 1
"""Version of the drawing code: bump it when a change alters the bytes written for the same parameters."""
SPEC_FILE = "robustdx-synthetic.json"
DATA_FOLDERS = {"camelyon17": "camelyon17_v1.0", "busi": "Dataset_BUSI_with_GT"}
"""The folder each format's writer fills under its root."""


WRITERS: dict[str, Callable[..., Path]] = {}
"""Format name -> writer (filled by :func:`_recorded`)."""


def spec(format_: str, **params: Any) -> dict[str, Any]:
    """The record the writer of ``format_`` leaves when called with ``params`` (its defaults filled in), to
    compare with :func:`read_spec`."""
    if format_ not in WRITERS:
        raise ValueError(f"unknown synthetic format {format_!r}; valid: {', '.join(WRITERS)}")
    bound = inspect.signature(WRITERS[format_]).bind(None, **params)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k != "root"}
    return {"format": format_, "generator": GENERATOR, "params": dict(sorted(args.items()))}


def _recorded(format_: str) -> Callable[[Callable[..., Path]], Callable[..., Path]]:
    """Register a writer under ``format_`` and make it end by writing its spec (only a finished write has one)."""

    def deco(fn: Callable[..., Path]) -> Callable[..., Path]:
        @functools.wraps(fn)
        def writer(root: Path | str, **params: Any) -> Path:
            folder = fn(root, **params)
            _write_spec(root, spec(format_, **params))
            return folder

        WRITERS[format_] = writer
        return writer

    return deco


def read_spec(root: Path | str) -> dict[str, Any] | None:
    """What the last *finished* write under ``root`` wrote, or None (nothing written, or not by robustdx)."""
    path = Path(root) / SPEC_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_spec(root: Path | str, record: dict[str, Any]) -> None:
    (Path(root) / SPEC_FILE).write_text(json.dumps(record, indent=2) + "\n")


def clear(root: Path | str, format_: str) -> None:
    """Remove a synthetic set of ``format_`` under ``root`` (its data folder and spec) before a rewrite, so no
    file of the old set survives; refuses a folder that robustdx did not write (real data is never deleted)."""
    root = Path(root)
    folder = root / DATA_FOLDERS[format_]
    if folder.exists() and read_spec(root) is None and not _is_ours(folder):
        raise FileExistsError(f"{folder} holds a data set robustdx did not write; refusing to delete it")
    shutil.rmtree(folder, ignore_errors=True)
    (root / SPEC_FILE).unlink(missing_ok=True)


def _is_ours(folder: Path) -> bool:
    """An interrupted synthetic write (no spec yet): the WILDS release note we write names robustdx."""
    note = folder / "RELEASE_v1.0.txt"
    return note.is_file() and note.read_text().startswith("robustdx synthetic")


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


@_recorded("camelyon17")
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


@_recorded("busi")
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


def _difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Why ``old`` (a :func:`read_spec` record) is not the set ``new`` asks for, in words."""
    if old is None:
        return "it has no robustdx-synthetic.json (written by an interrupted run or by something else)"
    if old.get("format") != new["format"]:
        return f"it is a {old.get('format')} set"
    if old.get("generator") != new["generator"]:
        return f"an older generator wrote it (version {old.get('generator')}, now {new['generator']})"
    changed = [f"{k}={old['params'].get(k)!r} (asked: {v!r})" for k, v in new["params"].items() if old["params"].get(k) != v]
    return "it was written with " + ", ".join(changed)


def ensure(root: Path | str, format_: str, *, force: bool = False, rewrite_stale: bool = False, **params: Any) -> str:
    """Make ``root`` hold a synthetic ``format_`` set written with ``params``; return what was done.

    ``"reused"`` when a finished set with the same spec is there (unless ``force``); ``"written"`` into an
    empty folder; ``"rewritten"`` after :func:`clear` when ``force``, or when the set there is stale (other
    parameters, an older :data:`GENERATOR`, an interrupted write) and ``rewrite_stale``.

    Raises:
        DataError: a stale set is there and neither flag allows a rewrite (the message says what differs).
        FileExistsError: the folder holds data robustdx did not write (never deleted).
    """
    from robustdx.core.errors import DataError

    root = Path(root)
    want = spec(format_, **params)
    old = read_spec(root)
    folder = root / DATA_FOLDERS[format_]
    present = folder.exists() or old is not None
    if old == want and folder.is_dir() and not force:
        return "reused"
    if present and not (force or rewrite_stale):
        raise DataError(f"{root} already holds a different synthetic data set: {_difference(old, want)}; --force rewrites it")
    if present:
        clear(root, format_)
    WRITERS[format_](root, **params)
    return "rewritten" if present else "written"
