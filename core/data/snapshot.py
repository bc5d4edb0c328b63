"""Data snapshots: the base training set plus clinician-labelled production images, frozen by content hash.

A snapshot is a folder ``runs/snapshots/ID/`` holding ``manifest.json``: every base training item (its pixel hash
and label), every accepted feedback image (file hash, label, request id, time, and whether it trains or is held
out as *recent* validation data), counts per class and source, and ``id``, the hash of all of that — the same
data gives the same id. :mod:`robustdx.core.feedback.snapshot` writes snapshots from the inference log; this module
reads them for training (:func:`with_snapshot`), so a model can be traced to, and rebuilt from, its exact data.

Why pixel hashes for the base set: base images come from several on-disk formats (WILDS, ImageFolder, BUSI);
hashing decoded pixels names the same image the same way in all of them. Feedback images are hashed by file,
the name of the content-addressed image store.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robustdx.core.data.base import DataError, ImageDataset, Records, Splits, open_rgb

MANIFEST = "manifest.json"


def pixel_sha256(records: Records, i: int) -> str:
    """The SHA-256 of item ``i``'s decoded RGB pixels and size (format-independent)."""
    image = records.loaders[i]()
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def base_items(records: Records, class_names: list[str]) -> list[dict[str, str]]:
    """Every base training item as ``{sha256, label}``, sorted (the order of the data set does not matter)."""
    items = [{"sha256": pixel_sha256(records, i), "label": class_names[int(records.labels[i])]} for i in range(len(records))]
    return sorted(items, key=lambda it: (it["sha256"], it["label"]))


def digest(obj: Any) -> str:
    """SHA-256 of canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def snapshot_id(base: list[dict[str, str]], feedback: list[dict[str, Any]]) -> str:
    """A snapshot's id: 16 hex digits of the hash of its items (the same data, the same id)."""
    return digest({"base": digest(base), "feedback": feedback})[:16]


def base_snapshot(splits: Splits) -> dict[str, Any]:
    """The data-card entry of a run trained without a snapshot: the base training set alone. Its id is the one
    ``robustdx data snapshot`` writes for this data when no feedback is accepted yet, so every bundle names
    the data it learned from (and a snapshot of it can be written and checked later)."""
    base = base_items(splits.train.records, splits.class_names)
    return {"id": snapshot_id(base, []), "base_only": True, "feedback_train": 0, "feedback_repeat": 1, "recent": 0,
            "until": None}  # fmt: skip


def manifest_path(snapshot: Path) -> Path:
    """``snapshot`` may name the folder or its manifest."""
    snapshot = Path(snapshot)
    return snapshot / MANIFEST if snapshot.is_dir() or snapshot.suffix != ".json" else snapshot


def load_manifest(snapshot: Path) -> dict[str, Any]:
    """Read and check a snapshot's manifest (its id must be the hash of its items).

    Raises:
        DataError: missing, unreadable, or altered.
    """
    path = manifest_path(snapshot)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no data snapshot at {path} (make one with `robustdx data snapshot`)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read data snapshot {path}: {err}") from None
    expected = snapshot_id(manifest["base"]["items"], manifest["feedback"]["items"])
    if manifest.get("id") != expected:
        raise DataError(f"data snapshot {path} was altered: its items hash to {expected}, not to its id {manifest.get('id')}")
    return manifest


def _feedback_records(items: list[dict[str, Any]], image_root: Path, class_names: list[str]) -> Records:
    paths = []
    for it in items:
        path = image_root / it["path"]
        if not path.is_file():
            raise DataError(f"snapshot image {path} is missing from the image store")
        if hashlib.sha256(path.read_bytes()).hexdigest() != it["sha256"]:
            raise DataError(f"snapshot image {path} was altered since the snapshot (its hash differs)")
        paths.append(path)
    labels = np.asarray([class_names.index(it["label"]) for it in items], dtype=int)
    return Records(
        loaders=[partial(open_rgb, p) for p in paths],
        labels=labels,
        groups=np.full(len(items), -1, dtype=int),  # production images: no hospital / source group
        names=[str(p) for p in paths],
    )


def _concat(a: Records, b: Records) -> Records:
    return Records(
        loaders=a.loaders + b.loaders,
        labels=np.concatenate([a.labels, b.labels]).astype(int),
        groups=np.concatenate([a.groups, b.groups]).astype(int),
        names=(a.names + b.names) if a.names and b.names else [],
    )


def with_snapshot(splits: Splits, snapshot: Path, repeat: int = 1) -> Splits:
    """``splits`` trained on the snapshot: its base training set checked against the snapshot's hashes, the
    snapshot's feedback images added to training, and its recent share as ``splits.recent``.

    Raises:
        DataError: the base data changed since the snapshot, or an image is missing or altered.
    """
    manifest = load_manifest(snapshot)
    base = base_items(splits.train.records, splits.class_names)
    if digest(base) != digest(manifest["base"]["items"]):
        raise DataError(
            f"the base training set is not the one of snapshot {manifest['id']} ({len(base)} items now, "
            f"{len(manifest['base']['items'])} then, or their pixels differ): train from the snapshot's data config"
        )
    unknown = {it["label"] for it in manifest["feedback"]["items"]} - set(splits.class_names)
    if unknown:
        raise DataError(f"snapshot {manifest['id']} has labels {sorted(unknown)} the data set does not ({splits.class_names})")
    root = Path(manifest["feedback"]["image_root"])
    items = manifest["feedback"]["items"]
    extra = _feedback_records([it for it in items if it["split"] == "train"], root, splits.class_names)
    recent = _feedback_records([it for it in items if it["split"] == "recent"], root, splits.class_names)
    train = splits.train.records
    for _ in range(repeat):
        train = _concat(train, extra)
    out = Splits(
        train=ImageDataset(train, splits.train.transform),
        val=splits.val,
        test=splits.test,
        train_eval=ImageDataset(train, splits.train_eval.transform),
        class_names=splits.class_names,
        group_names=splits.group_names,
        cv=splits.cv,
        recent=ImageDataset(recent, splits.val.transform) if len(recent) else None,
        snapshot={"id": manifest["id"], "base_only": False, "feedback_train": len(extra), "feedback_repeat": repeat,
                  "recent": len(recent), "until": manifest["until"]},  # fmt: skip
    )
    return out
