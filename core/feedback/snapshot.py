"""``robustdx data snapshot``: freeze the base training set plus accepted clinician feedback up to a time.

Accepted feedback: answers on predictions whose image was stored, where every reviewer of that prediction gave
the same label (disputed ones wait until reviewers agree; they are counted). Each accepted image is assigned, by
its hash, to training or to the held-out *recent* share that promotion validates on, so the assignment never
changes between snapshots. The manifest format and its reading side: :mod:`robustdx.core.data.snapshot`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robustdx.core.config import DataConfig
from robustdx.core.data import build_splits
from robustdx.core.data.snapshot import MANIFEST, base_items, snapshot_id
from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.store import FeedbackStore, consensus
from robustdx.core.util import atomic_write_bytes


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: Path
    manifest: dict[str, Any]
    created: bool  # False: a snapshot of exactly this data existed already


def is_recent(sha256: str, share: float) -> bool:
    """Whether an image belongs to the held-out recent share (by hash: stable across snapshots)."""
    return int(sha256[:8], 16) / 0xFFFFFFFF < share


def _counts(items: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it["label"]] = out.get(it["label"], 0) + 1
    return dict(sorted(out.items()))


def build_snapshot(
    data: DataConfig,
    store: FeedbackStore,
    images: ImageStore,
    out_dir: Path,
    until: datetime | None = None,
    recent_share: float = 0.25,
) -> Snapshot:
    """Write (or find) the snapshot of ``data``'s training split plus the feedback accepted up to ``until``.

    Raises:
        ValueError: ``recent_share`` outside [0, 1).
    """
    if not 0 <= recent_share < 1:
        raise ValueError(f"recent_share must be in [0, 1), got {recent_share}")
    until = (until or datetime.now(UTC)).astimezone(UTC)
    splits = build_splits(data.model_copy(update={"snapshot": None}))
    base = base_items(splits.train.records, splits.class_names)
    records, agreed, disputed = consensus(store.feedback_with_inferences(until))
    items, missing = [], 0
    # by time, then by image: the same images answered in the same order give the same training order
    for rid, label in sorted(agreed.items(), key=lambda kv: (records[kv[0]].created_at, records[kv[0]].image_sha256, kv[0])):
        inf = records[rid]
        path = images.path_of(inf.image_sha256)
        if path is None:
            missing += 1
            continue
        items.append({
            "sha256": inf.image_sha256, "label": label, "request_id": rid, "model_version": inf.model_version,
            "predicted": inf.prediction, "created_at": inf.created_at.isoformat(),
            "split": "recent" if is_recent(inf.image_sha256, recent_share) else "train",
            "path": str(path.relative_to(images.root)),
        })  # fmt: skip
    sid = snapshot_id(base, items)
    folder = Path(out_dir) / sid
    if (folder / MANIFEST).is_file():
        return Snapshot(sid, folder, json.loads((folder / MANIFEST).read_text()), created=False)
    manifest = {
        "id": sid,
        "created": datetime.now(UTC).isoformat(),
        "until": until.isoformat(),
        "recent_share": recent_share,
        "base": {
            "dataset": str(data.dataset), "root": str(data.root), "split_seed": data.split_seed, "n_train": data.n_train,
            "n": len(base), "per_class": _counts(base), "items": base,
        },
        "feedback": {
            "image_root": str(images.root.resolve()), "n": len(items), "disputed": disputed, "missing_images": missing,
            "per_class": {s: _counts([it for it in items if it["split"] == s]) for s in ("train", "recent")},
            "items": items,
        },
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
    return Snapshot(sid, folder, manifest, created=True)


def newest_snapshot(out_dir: Path) -> Path | None:
    """The most recently written snapshot folder under ``out_dir`` (None when there is none)."""
    found = sorted(Path(out_dir).glob(f"*/{MANIFEST}"), key=lambda p: json.loads(p.read_text()).get("created", ""))
    return found[-1].parent if found else None
