"""The retrain's data: freeze the newest data snapshot (base training set + accepted clinician feedback) before
training, waiting (bounded) for enough labelled recent images when asked to.

Why wait: a drift alert fires when production images changed; a retrain started at that moment has no labels for
the new images yet and would learn the old distribution again. The drift-triggered deployment therefore waits up
to ``wait_seconds`` for ``min_labelled`` accepted feedback images on predictions made since ``lookback_hours``
ago, then trains with what it has and says so in its artifacts (``short``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from robustdx.core.config import DataConfig
from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.snapshot import build_snapshot
from robustdx.core.feedback.store import FeedbackStore, consensus, default_locations


class FeedbackSettings(BaseModel):
    """Whether and how a retrain trains on clinician feedback (a data snapshot)."""

    model_config = ConfigDict(extra="forbid")

    use: bool = Field(True, description="Train on a fresh data snapshot: the base data plus accepted clinician feedback.")
    db_url: str | None = Field(
        None, description="Inference log URL; default $ROBUSTDX_INFERENCE_DB_URL, else SQLite in $BENTOML_HOME/feedback."
    )
    images: str | None = Field(None, description="The service's image store; default $BENTOML_HOME/feedback/images.")
    snapshots_dir: str | None = Field(
        None, description="Where snapshots are written; default beside the retrain's output_dir (runs/snapshots)."
    )
    recent_share: float = Field(0.25, ge=0, lt=1, description="Share of feedback images held out as 'recent' validation.")
    min_labelled: int = Field(0, ge=0, description="Labelled recent images to wait for before training (0: do not wait).")
    lookback_hours: float = Field(24.0, gt=0, description="'Recent': predictions made within this many hours.")
    wait_seconds: float = Field(0.0, ge=0, le=7 * 86400, description="Longest wait for min_labelled, then train anyway.")
    poll_seconds: float = Field(30.0, gt=0, description="Seconds between two looks at the inference log while waiting.")


def _recent(manifest: dict[str, Any], since: datetime) -> int:
    return sum(datetime.fromisoformat(it["created_at"]) >= since for it in manifest["feedback"]["items"])


def labelled_recent(store: FeedbackStore, images: ImageStore, since: datetime) -> int:
    """Predictions made since ``since`` that a snapshot would accept now (reviewers agree, image stored): what the
    wait counts, read from the log without hashing the base set or writing a snapshot at every look."""
    records, agreed, _disputed = consensus(store.feedback_with_inferences())
    return sum(records[rid].created_at >= since and images.path_of(records[rid].image_sha256) is not None for rid in agreed)


def freeze_snapshot(
    settings: FeedbackSettings,
    data: DataConfig,
    home: str | None,
    output_dir: str | Path,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Write the snapshot the retrain trains on (waiting for labels as configured); returns what its artifact shows.
    Its path is absolute: sweep trials run in folders of their own."""
    out = Path(settings.snapshots_dir or Path(output_dir).parent / "snapshots").resolve()  # the CLI's default too
    default_db, default_images = default_locations(home)
    store = FeedbackStore(settings.db_url or os.environ.get("ROBUSTDX_INFERENCE_DB_URL") or default_db)
    images = ImageStore(settings.images or default_images)
    try:
        store.migrate()
        since = datetime.now(UTC) - timedelta(hours=settings.lookback_hours)
        deadline = time.monotonic() + settings.wait_seconds
        while settings.min_labelled and time.monotonic() < deadline:
            recent = labelled_recent(store, images, since)
            if recent >= settings.min_labelled:
                break
            log(f"{recent} of {settings.min_labelled} labelled recent images; looking again in {settings.poll_seconds:g} s")
            time.sleep(min(settings.poll_seconds, max(0.0, deadline - time.monotonic())))
        snap = build_snapshot(data, store, images, out, recent_share=settings.recent_share)
        recent = _recent(snap.manifest, since)
    finally:
        store.close()
    fb = snap.manifest["feedback"]
    short = recent < settings.min_labelled
    if short:
        log(f"training with {recent} labelled recent images, fewer than the {settings.min_labelled} asked for")
    return {
        "id": snap.id, "path": str(snap.path.resolve()), "feedback": fb["n"], "recent_labelled": recent, "short": short,
        "min_labelled": settings.min_labelled, "per_class": fb["per_class"], "disputed": fb["disputed"],
        "base": snap.manifest["base"]["n"],
    }  # fmt: skip


def snapshot_markdown(snap: dict[str, Any]) -> str:
    """The retrain's data artifact."""
    lines = [
        f"# Data snapshot `{snap['id']}`",
        "",
        f"- base training images: {snap['base']}",
        f"- accepted clinician feedback: {snap['feedback']} (train {snap['per_class']['train']}, "
        f"held out as recent {snap['per_class']['recent']}); {snap['disputed']} disputed, left out",
        f"- labelled recent images: {snap['recent_labelled']} (asked for {snap['min_labelled']})",
        f"- manifest: `{snap['path']}/manifest.json`",
    ]
    if snap["short"]:
        lines += ["", f"**Trained with fewer labelled recent images than asked for ({snap['recent_labelled']} < "
                  f"{snap['min_labelled']}): the wait ran out.**"]  # fmt: skip
    return "\n".join(lines)
