"""Data snapshots end to end on the synthetic Camelyon17 copy: accepted feedback frozen with the base training
set, the same data giving the same id, training from a snapshot (its bundle names it), and the refusals when the
base data, an image or the manifest changed. Also ``robustdx data snapshot`` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from robustdx.core.config import parse_config
from robustdx.core.data import build_splits
from robustdx.core.data.base import DataError
from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.snapshot import build_snapshot, is_recent, newest_snapshot
from robustdx.core.feedback.store import FeedbackStore, InferenceRecord, sqlite_url
from robustdx.core.training.recipes import run_recipe
from tests.deploy.stack import stain_patch
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _fill(store: FeedbackStore, images: ImageStore, n: int, stored: bool = True, start: int = 0) -> list[str]:
    """``n`` predictions of shifted patches, stored, each answered by one reviewer with the patch's true class."""
    ids = []
    for i in range(start, start + n):
        data = stain_patch(1000 + i, shifted=True, size=32)
        digest = images.put(data)[0] if stored else __import__("hashlib").sha256(data).hexdigest()
        rid = f"{i:032x}"
        store.log_inferences([InferenceRecord(rid, T0 + timedelta(minutes=i), "v1", "m:v1", digest, stored, "normal",
                                              {"normal": 0.6, "tumor": 0.4}, 0.6, True)])  # fmt: skip
        store.add_feedback(rid, "dr.a", "tumor" if (1000 + i) % 2 else "normal", now=T0 + timedelta(hours=1, minutes=i))
        ids.append(rid)
    return ids


@pytest.fixture
def setup(camelyon_root: Path, tmp_path: Path) -> tuple[dict, FeedbackStore, ImageStore]:
    store = FeedbackStore(sqlite_url(tmp_path / "feedback" / "inference.db"))
    store.migrate()
    images = ImageStore(tmp_path / "feedback" / "images")
    raw = tiny_raw(camelyon_root, tmp_path / "runs", recipe="ce", name="snap")
    return raw, store, images


def test_snapshot_freezes_base_and_accepted_feedback(setup, tmp_path: Path) -> None:
    raw, store, images = setup
    _fill(store, images, 24)
    store.add_feedback(f"{0:032x}", "dr.b", "tumor", now=T0 + timedelta(hours=1, minutes=30))  # dr.a said normal
    cfg = parse_config(raw)
    snap = build_snapshot(cfg.data, store, images, tmp_path / "snapshots", until=T0 + timedelta(hours=2), recent_share=0.25)
    fb, base = snap.manifest["feedback"], snap.manifest["base"]
    assert snap.created and snap.path == tmp_path / "snapshots" / snap.id and len(snap.id) == 16
    assert fb["n"] == 23 and fb["disputed"] == 1 and fb["missing_images"] == 0
    assert base["n"] == len(build_splits(cfg.data).train) and sum(base["per_class"].values()) == base["n"]
    assert all((it["split"] == "recent") == is_recent(it["sha256"], 0.25) for it in fb["items"])
    assert 0 < sum(fb["per_class"]["recent"].values()) < 23
    again = build_snapshot(cfg.data, store, images, tmp_path / "snapshots", until=T0 + timedelta(hours=2), recent_share=0.25)
    assert (again.id, again.created) == (snap.id, False), "the same data, the same snapshot"
    early = build_snapshot(cfg.data, store, images, tmp_path / "snapshots", until=T0 + timedelta(hours=1, minutes=5))
    assert early.manifest["feedback"]["n"] == 6 and early.id != snap.id, "until (inclusive) bounds the feedback taken"

    # training from it: base + the train share; the recent share is its own split; the bundle names the snapshot
    cfg_s = parse_config({**raw, "data": {**raw["data"], "snapshot": str(snap.path)}})
    splits = build_splits(cfg_s.data)
    n_recent = sum(fb["per_class"]["recent"].values())
    assert len(splits.train) == base["n"] + 23 - n_recent and len(splits.recent) == n_recent
    twice = parse_config({**raw, "data": {**raw["data"], "snapshot": str(snap.path), "feedback_repeat": 2}})
    assert len(build_splits(twice.data).train) == base["n"] + 2 * (23 - n_recent), "feedback images oversampled"
    result = run_recipe(cfg_s)
    card = json.loads((result.bundle / "data_card.json").read_text())
    assert card["snapshot"]["id"] == snap.id and card["splits"]["recent"]["n"] == n_recent
    assert newest_snapshot(tmp_path / "snapshots") in {snap.path, early.path}


def test_a_changed_base_image_or_manifest_is_refused(setup, tmp_path: Path, camelyon_root: Path) -> None:
    raw, store, images = setup
    _fill(store, images, 6)
    cfg = parse_config(raw)
    snap = build_snapshot(cfg.data, store, images, tmp_path / "snapshots")
    with_snap = parse_config({**raw, "data": {**raw["data"], "snapshot": str(snap.path)}})
    other = parse_config({**raw, "data": {**raw["data"], "snapshot": str(snap.path), "n_train": 20}})
    with pytest.raises(DataError, match="base training set is not the one"):
        build_splits(other.data)
    item = snap.manifest["feedback"]["items"][0]
    path = images.root / item["path"]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="altered since the snapshot"):
        build_splits(with_snap.data)
    manifest = snap.path / "manifest.json"
    m = json.loads(manifest.read_text())
    m["feedback"]["items"][0]["label"] = "normal" if item["label"] == "tumor" else "tumor"
    manifest.write_text(json.dumps(m))
    with pytest.raises(DataError, match="was altered"):
        build_splits(with_snap.data)
    assert np.asarray(build_splits(cfg.data).train.labels).size > 0, "without a snapshot nothing changes"


def test_cli_snapshot(setup, tmp_path: Path) -> None:
    raw, store, images = setup
    _fill(store, images, 4)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "robustdx.cli.app", "data", "snapshot", "-c", str(tmp_path / "cfg.yaml"),
           "--db", store.url, "--images", str(images.root), "--out", str(tmp_path / "snaps")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "4 images" in out.stdout and "--set data.snapshot=" in out.stdout
    bad = subprocess.run([*cmd, "--until", "yesterday"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "ISO 8601" in bad.stdout + bad.stderr


def test_the_retrain_waits_for_labels_then_trains_with_what_it_has(setup, tmp_path: Path) -> None:
    import threading

    from robustdx.flows.snapshots import FeedbackSettings, freeze_snapshot, labelled_recent

    raw, store, images = setup
    _fill(store, images, 6)
    store.add_feedback(f"{0:032x}", "dr.b", "tumor")  # dr.a said normal: disputed, not counted
    data = parse_config(raw).data
    since = T0 - timedelta(minutes=1)
    assert labelled_recent(store, images, since) == 5 and labelled_recent(store, images, T0 + timedelta(minutes=3)) == 3
    common = {"db_url": store.url, "images": str(images.root), "snapshots_dir": str(tmp_path / "snaps"),
              "lookback_hours": (datetime.now(UTC) - since).total_seconds() / 3600}  # fmt: skip
    logs: list[str] = []

    # too few answers: it looks again every poll, then trains with what it has and says so
    short = freeze_snapshot(FeedbackSettings(**common, min_labelled=8, wait_seconds=0.6, poll_seconds=0.2), data, None,
                            tmp_path / "out", log=logs.append)  # fmt: skip
    assert short["short"] and short["recent_labelled"] == 5 and short["feedback"] == 5
    assert sum("of 8 labelled recent images" in m for m in logs) >= 2 and "fewer than the 8" in logs[-1]
    assert len(list((tmp_path / "snaps").iterdir())) == 1, "one snapshot, not one per look"

    # answers arriving during the wait end it before the deadline
    def answer_later() -> None:
        time.sleep(0.5)
        _fill(store, images, 3, start=6)

    started = time.monotonic()
    threading.Thread(target=answer_later).start()
    done = freeze_snapshot(FeedbackSettings(**common, min_labelled=8, wait_seconds=30, poll_seconds=0.2), data, None,
                           tmp_path / "out")  # fmt: skip
    assert not done["short"] and done["recent_labelled"] == 8 and time.monotonic() - started < 10
