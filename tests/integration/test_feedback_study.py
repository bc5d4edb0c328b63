"""The feedback study on the synthetic Camelyon17 copy: A, the shifted stream through the inference log with
reviewers' labels, the snapshot, B trained from it, paired scores on held-out items; and a rerun that reuses
everything. The real-data numbers are reports/feedback-pcam (configs/experiments/feedback-pcam.yaml)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from robustdx.core.config import FeedbackStudyConfig, load_feedback_study, parse_config
from robustdx.core.data import build_splits
from robustdx.core.data.snapshot import base_items, snapshot_id
from robustdx.core.data.synthetic import apply_stain
from robustdx.core.evaluation.feedback_study import rewrite_report, run_feedback_study, shifted_png, stream_and_held_out
from robustdx.core.feedback.schema import feedback, inferences
from robustdx.core.feedback.store import FeedbackStore, sqlite_url
from tests.support.configs import learnable_raw

pytestmark = pytest.mark.integration


def test_stream_and_held_out_are_a_seeded_partition() -> None:
    stream, held = stream_and_held_out(100, 40, seed=3)
    assert len(stream) == 40 and len(held) == 60 and not set(stream) & set(held)
    assert sorted({*stream, *held}) == list(range(100))
    assert np.array_equal(stream, stream_and_held_out(100, 40, seed=3)[0])
    assert not np.array_equal(stream, stream_and_held_out(100, 40, seed=4)[0])
    with pytest.raises(ValueError, match="at least 10 must be"):
        stream_and_held_out(100, 95, seed=0)


def test_report_only_before_the_study_ran_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(learnable_raw(tmp_path, tmp_path / "runs")))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": "base.yaml", "output_dir": str(tmp_path)}))
    r = subprocess.run([sys.executable, "-m", "robustdx.cli", "feedback-study", "-c", str(tmp_path / "s.yaml"), "--report-only"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "run the study first" in r.stdout + r.stderr, (r.returncode, r.stdout[-400:], r.stderr[-400:])


def test_shifted_png_is_the_stain_shift_rounded_to_8_bits() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    tint, bright = (0.75, 0.6, 0.95), 0.08
    got = np.asarray(Image.open(io.BytesIO(shifted_png(img, tint, bright))), dtype=np.float32) / 255
    want = apply_stain(np.asarray(img, dtype=np.float32) / 255, np.asarray(tint), bright)
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6
    assert not np.allclose(got, np.asarray(img, dtype=np.float32) / 255)


def test_study_logs_feedback_trains_b_from_the_snapshot_and_scores_both_on_the_same_items(
    learnable_root: Path, tmp_path: Path
) -> None:
    raw = learnable_raw(learnable_root, tmp_path / "unused", recipe="ce", pretrain__epochs=2)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "name": "study", "base": "base.yaml", "n_feedback": 40, "recent_share": 0.25, "feedback_repeat": 2,
        "n_robust": 16, "n_boot": 200, "output_dir": str(tmp_path / "reports"),
    }))  # fmt: skip
    study, base = load_feedback_study(tmp_path / "study.yaml")
    assert isinstance(study, FeedbackStudyConfig) and study.shift.tint == (0.75, 0.6, 0.95)
    readme = run_feedback_study(study, base, tmp_path / "study.yaml")
    out = readme.parent
    report = json.loads((out / "report.json").read_text())
    n_test = len(build_splits(parse_config(raw).data).test)

    # the stream went through the inference log: every image stored, predicted by A and labelled
    store = FeedbackStore(sqlite_url(out / "feedback" / "inference.db"))
    with store.engine.connect() as conn:
        rows = conn.execute(select(inferences.c.request_id, inferences.c.prediction, inferences.c.model_version)).all()
        labels = dict(conn.execute(select(feedback.c.request_id, feedback.c.label)).all())
    store.close()
    assert len(rows) == len(labels) == 40
    assert {r.model_version for r in rows} == {report["models"]["A"]["version"]}
    agree = sum(r.prediction == labels[r.request_id] for r in rows)
    assert report["feedback"]["n"] == 40 and report["feedback"]["agree"] == agree

    # B trained from the snapshot of that feedback; A's bundle names the base set's snapshot
    snap = report["snapshot"]
    assert snap["feedback_train"] + snap["recent"] == 40 and snap["recent"] > 0 and snap["feedback_repeat"] == 2
    card_a = json.loads((Path(report["models"]["A"]["run"]) / "bundle" / "data_card.json").read_text())
    card_b = json.loads((Path(report["models"]["B"]["run"]) / "bundle" / "data_card.json").read_text())
    assert card_b["snapshot"]["id"] == snap["id"] and not card_b["snapshot"]["base_only"]
    assert card_b["splits"]["train"]["n"] == card_a["splits"]["train"]["n"] + 2 * snap["feedback_train"]
    splits = build_splits(parse_config(raw).data)
    base_id = snapshot_id(base_items(splits.train.records, splits.class_names), [])
    assert card_a["snapshot"] == {"id": base_id, "base_only": True, "feedback_train": 0, "feedback_repeat": 1, "recent": 0,
                                  "until": None}  # fmt: skip
    assert "Data snapshot `" in (Path(report["models"]["A"]["run"]) / "bundle" / "MODEL_CARD.md").read_text()

    # both models on the same held-out items, disjoint from the stream; the tests count what the items say
    assert report["n_held_out"] == n_test - 40 == len(report["held_out_items"])
    for setting in ("shifted", "base"):
        a, b = report["scores"]["A"][setting], report["scores"]["B"][setting]
        assert a["n"] == b["n"] == n_test - 40
        assert a["robust"]["items"] == b["robust"]["items"] and a["robust"]["n"] == 16
        ca, cb = np.asarray(a["correct"]), np.asarray(b["correct"])
        cmp = report["comparison"][setting]["clean"]
        assert (cmp["a_better"], cmp["b_better"]) == (int((cb & ~ca).sum()), int((ca & ~cb).sum()))  # a = B, b = A
        assert cmp["difference"] == pytest.approx(cb.mean() - ca.mean())
        assert a["accuracy"]["k"] == int(ca.sum()) and a["accuracy"]["lo"] <= a["accuracy"]["value"] <= a["accuracy"]["hi"]
    text = readme.read_text()
    assert "## What these numbers support" in text and snap["id"] in text and len(report["findings"]) == 8
    for setting in ("shifted", "base"):  # per-class recall, paired on the items of each class
        a, b = report["scores"]["A"][setting], report["scores"]["B"][setting]
        labels = np.asarray(a["labels"])
        for k, name in enumerate(report["class_names"]):
            c = report["comparison"][setting][f"recall {name}"]
            assert c["n"] == a["recall"][k]["n"] == int((labels == k).sum())
            assert c["mean_a"] == pytest.approx(b["recall"][k]["value"]) and c["mean_b"] == pytest.approx(a["recall"][k]["value"])
    readme.unlink()
    old = json.loads((out / "report.json").read_text())
    for m in "AB":  # a report written before the labels were kept
        for setting in ("shifted", "base"):
            del old["scores"][m][setting]["labels"]
    (out / "report.json").write_text(json.dumps(old))
    assert rewrite_report(study, base).read_text() == text, "the README is a function of the per-item scores"
    assert json.loads((out / "report.json").read_text()) == report

    # a rerun reuses A, the log, the snapshot and B, and reproduces the numbers
    bundles = {m: (Path(report["models"][m]["run"]) / "bundle" / "manifest.json").stat().st_mtime_ns for m in "AB"}
    again = json.loads((run_feedback_study(study, base, tmp_path / "study.yaml").parent / "report.json").read_text())
    assert again["snapshot"]["id"] == snap["id"] and again["scores"] == report["scores"]
    assert bundles == {m: (Path(again["models"][m]["run"]) / "bundle" / "manifest.json").stat().st_mtime_ns for m in "AB"}

    # a second shift sharing the runs folder reuses A and trains its own B
    shared = f"runs_dir={Path(report['models']['A']['run']).parent}"
    strong, _ = load_feedback_study(tmp_path / "study.yaml", ["name=strong", "shift.tint=[0.5,0.4,0.7]", shared])
    other = json.loads((run_feedback_study(strong, base, tmp_path / "study.yaml").parent / "report.json").read_text())
    assert other["models"]["A"] == report["models"]["A"] and Path(other["models"]["B"]["run"]).name == "B-strong"
    assert (Path(report["models"]["A"]["run"]) / "bundle" / "manifest.json").stat().st_mtime_ns == bundles["A"]
    assert other["snapshot"]["id"] != snap["id"] and other["study"]["shift"]["tint"] == [0.5, 0.4, 0.7]
