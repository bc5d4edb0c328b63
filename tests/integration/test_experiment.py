"""``robustdx experiment`` end to end on the synthetic Camelyon17 copy: cells, report folder, resumption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from robustdx.core.config import load_experiment
from robustdx.core.evaluation.experiment import run_experiment
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.integration


def test_experiment_writes_a_resumable_report(camelyon_root: Path, tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_raw(camelyon_root, tmp_path / "unused")))
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": "base.yaml",
                "recipes": ["ce", "adv_supcon_ft"],
                "seeds": [0, 1],
                "eps_grid": ["0", "2/255", "8/255"],
                "pgd_steps": 3,
                "pgd_restarts": 2,
                "n_robust": 16,
                "n_square": 8,
                "square_queries": 20,
                "n_boot": 200,
                "attribution": {"n_images": 4, "n_sanity": 2, "n_infidelity": 2, "n_grid": 2},
                "output_dir": str(tmp_path / "reports"),
            }
        )
    )
    exp, base = load_experiment(exp_file)
    log: list[str] = []
    report = run_experiment(exp, base, log=log.append)

    folder = tmp_path / "reports" / "tiny"
    assert report == folder / "report.md"
    text = report.read_text()
    for heading in ("Mean ± std over seeds", "Attribution quality", "Per cell"):
        assert heading in text
    for png in ("accuracy_vs_eps.png", "training_curves.png", "ig_grid.png"):
        assert (folder / png).stat().st_size > 1000
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert sorted((r["recipe"], r["seed"]) for r in rows) == [
        ("adv_supcon_ft", "0"),
        ("adv_supcon_ft", "1"),
        ("ce", "0"),
        ("ce", "1"),
    ]
    for r in rows:
        assert 0 <= float(r["test_acc_lo"]) <= float(r["test_acc"]) <= float(r["test_acc_hi"]) <= 1
        accs = [float(r[f"robust_acc@{e}/255"]) for e in (0, 2, 8)]
        assert accs[0] == pytest.approx(float(r["test_acc"]), abs=0.35)  # subsample of the test split
        assert all(0 <= a <= 1 for a in accs)
        assert 0 <= float(r["ig_clean_region_mass"]) <= 1
        assert 0 <= float(r["ig_clean_ig_rel_error_max"]) < 0.2  # reported, not enforced: the rule is fixed (64 points)
    summary = list(csv.DictReader(open(folder / "summary.csv")))
    assert [s["recipe"] for s in summary] == ["ce", "adv_supcon_ft"] and all(s["seeds"] == "2" for s in summary)
    cell = json.loads((folder / "cells" / "ce-s0.json").read_text())
    assert [p["eps"] for p in cell["robustness"]] == pytest.approx([0, 2 / 255, 8 / 255])

    # a rerun skips every finished cell and rewrites the same numbers
    before = (folder / "results.csv").read_text()
    log.clear()
    run_experiment(exp, base, log=log.append)
    assert sum("skipped" in m for m in log) == 4
    assert (folder / "results.csv").read_text() == before
