"""``robustdx experiment`` end to end on tiny synthetic data: cells with per-item outcomes, a report that opens
with its findings, resumption; and cross-validation on a BUSI-layout set (every image tested once)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from robustdx.core.config import load_experiment
from robustdx.core.evaluation.experiment import run_experiment
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.integration

TINY = {
    "robustness": {"n_items": 40, "n_grid": 16, "n_square": 8, "square_queries": 20, "pgd_steps": 3, "pgd_restarts": 1,
                   "apgd_steps": 3, "grid_eps": ["8/255"], "sanity_eps": ["64/255"], "batch_size": 32},
    "attribution": {"n_images": 4, "n_steps": 16, "n_sanity": 2, "n_infidelity": 2, "n_grid": 2},
    "n_boot": 200,
}  # fmt: skip


def _experiment(tmp_path: Path, base: dict[str, Any], **over: Any) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "exp.yaml"
    spec = {"name": "tiny", "base": "base.yaml", "output_dir": str(tmp_path / "reports"), **TINY, **over}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_experiment_writes_a_resumable_report_that_opens_with_its_findings(camelyon_root: Path, tmp_path: Path) -> None:
    exp, base = load_experiment(
        _experiment(
            tmp_path,
            tiny_raw(camelyon_root, tmp_path / "unused"),
            recipes=["ce", "adv_supcon_ft"],
            seeds=[0, 1],
            budget={"passes": 4},
        )  # fmt: skip
    )
    log: list[str] = []
    report = run_experiment(exp, base, log=log.append)
    folder = tmp_path / "reports" / "tiny"
    assert report == folder / "report.md"
    text = report.read_text()
    assert text.index("## What these results support") < text.index("## Per recipe")
    assert "Equal budgets: 4 optimiser passes" in text
    for png in ("accuracy_vs_eps.png", "training_curves.png", "ig_grid.png"):
        assert (folder / png).stat().st_size > 1000
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert sorted(r["cell"] for r in rows) == ["adv_supcon_ft-s0", "adv_supcon_ft-s1", "ce-s0", "ce-s1"]
    comparisons = list(csv.DictReader(open(folder / "comparisons.csv")))
    assert {(c["a"], c["b"]) for c in comparisons} == {("adv_supcon_ft", "ce")}
    assert all(float(c["p_holm"]) >= float(c["p_value"]) for c in comparisons)

    cells = {p.stem: json.loads(p.read_text()) for p in (folder / "cells").glob("*.json")}
    assert len({tuple(c["items"]) for c in cells.values()}) == 1, "every cell is scored on the same items"
    ce = cells["ce-s0"]
    assert ce["epochs"] == {"pretrain": 4} and cells["adv_supcon_ft-s0"]["epochs"] == {"pretrain": 1, "finetune": 2}
    head = [b for b in ce["robustness"]["budgets"] if b["role"] == "headline"]
    assert [b["eps_label"] for b in head] == ["4/255", "8/255"] and all(b["n"] == 40 for b in head)
    for b in ce["robustness"]["budgets"]:
        acc = b["robust_acc"]
        assert 0 <= acc["lo"] <= acc["value"] <= acc["hi"] <= 1
        assert all(r <= c for r, c in zip(b["robust_items"], ce["robustness"]["clean_items"], strict=False))
    assert "square_only_broken" in head[0] and ce["attribution"]["n"] == 4
    assert sum("attributions (4 images, with their controls)" in m for m in log) == 4  # the count attributed, not the cap

    before = (folder / "results.csv").read_text()
    log.clear()
    run_experiment(exp, base, log=log.append)
    assert sum("skipped" in m for m in log) == 4
    assert (folder / "results.csv").read_text() == before

    # a cell finished before Square ran at the sanity budgets: the next run adds it from its bundle, no training
    path = folder / "cells" / "ce-s0.json"
    before_strip = path.read_text()
    older = json.loads(before_strip)
    sanity = [b for b in older["robustness"]["budgets"] if b["role"] == "sanity"]
    assert sanity and all("square_attacked" in b for b in sanity)
    for b in sanity:
        for key in ("square_n", "square_attacked", "square_only_broken"):
            del b[key]
    stripped = json.dumps(older)
    path.write_text(stripped)
    log.clear()
    run_experiment(exp, base, log=log.append)
    assert sum("skipped" in m for m in log) == 3 and not any("training" in m for m in log)
    assert any(m.startswith("ce-s0: done before; Square at eps=64/255 broke ") for m in log)
    added = json.loads(path.read_text())
    assert added["completed"]["what"] == "Square at the sanity budgets" and added["flags"] == added["robustness"]["flags"]
    first = json.loads(before_strip)  # as the run wrote it, Square at the sanity budgets included
    assert all(b["square_only_broken"] == 0 for b in first["robustness"]["budgets"] if b["role"] == "sanity")
    # so the survivors were the same, and adding Square gives back what the run wrote (but the cost: the stripped
    # record still counted the first Square's queries, which a record written without Square would not)
    cost = ("seconds", "evaluations_per_item")
    assert [{k: v for k, v in b.items() if k not in cost} for b in added["robustness"]["budgets"]] == [
        {k: v for k, v in b.items() if k not in cost} for b in first["robustness"]["budgets"]
    ]

    bundles = sorted(folder.glob("runs/*adv_supcon_ft*s0*/bundle"))
    assert len(bundles) == 1
    shutil.rmtree(bundles[0])  # records outlive run folders (a copied report): the IG grid plots what is left
    gone = folder / "cells" / "adv_supcon_ft-s0.json"  # ... and an older record whose bundle is gone stays as it is
    gone_record = json.loads(gone.read_text())
    for b in gone_record["robustness"]["budgets"]:
        if b["role"] == "sanity":
            del b["square_n"], b["square_attacked"], b["square_only_broken"]
    gone_record["flags"] = gone_record["robustness"]["flags"] = ["a flag today's rules do not raise"]
    gone.write_text(json.dumps(gone_record))
    log.clear()
    run_experiment(exp, base, log=log.append)
    assert any(m.startswith("adv_supcon_ft-s0: done before; its bundle") and "is gone" in m for m in log)
    assert json.loads(gone.read_text()) == gone_record and path.read_text() != stripped

    (folder / "cells" / "ce-s1.json").unlink()  # as if the run were still going: report what is finished
    (folder / "ig_grid.png").unlink()
    run_experiment(exp, base, report_only=True)
    partial = (folder / "report.md").read_text()
    assert "Partial report: 3 of 4 cells finished** (missing: ce-s1)" in partial
    assert "a flag today's rules do not raise" not in partial  # flags are judged when the report is written
    assert "One training seed of ce: a comparison involving them" in partial and "One training seed" not in text
    assert (folder / "ig_grid.png").stat().st_size > 1000
    assert len(list(csv.DictReader(open(folder / "results.csv")))) == 3
    for cell in (folder / "cells").glob("*.json"):
        cell.unlink()
    with pytest.raises(ValueError, match="no finished cell"):
        run_experiment(exp, base, report_only=True)


def test_cross_validation_tests_every_image_once(busi_root: Path, tmp_path: Path) -> None:
    raw = tiny_raw(busi_root, tmp_path / "unused", recipe="ce", monitor="bal_acc")
    raw["data"].update(dataset="busi", root=str(busi_root), image_size=16)
    raw["pretrain"]["class_weights"] = "balanced"
    over = {**TINY, "robustness": {**TINY["robustness"], "n_items": None}}
    exp, base = load_experiment(_experiment(tmp_path, raw, recipes=["ce", "adv_ce"], seeds=[0], folds=2, **over))
    log: list[str] = []
    run_experiment(exp, base, log=log.append, workers=2)  # the cells in two processes at once
    assert "4 cells to run in 2 worker processes" in log[0]
    finished = sorted(m.split(":")[0] for m in log if "finished (" in m)
    assert finished == ["adv_ce-s0-f0", "adv_ce-s0-f1", "ce-s0-f0", "ce-s0-f1"]
    folder = tmp_path / "reports" / "tiny"
    cells = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("ce-*.json"))]
    assert [c["fold"] for c in cells] == [0, 1]
    pooled_ce = np.mean([ok for c in cells for ok in c["robustness"]["clean_items"]])
    clean = next(c for c in csv.DictReader(open(folder / "comparisons.csv")) if c["metric"] == "clean")
    assert (clean["a"], clean["b"], clean["n"]) == ("adv_ce", "ce", "50"), "paired over both folds' items"
    assert float(clean["mean_b"]) == pytest.approx(pooled_ce), "each item scored by its own fold's cell"
    assert "One training seed of ce, adv_ce (one model per fold)" in (folder / "report.md").read_text()
    assert all(c["environment"]["device"] and c["environment"]["torch"] for c in cells)
    assert all(re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", c["environment"]["commit"]) for c in cells)  # the code it ran
    ids = [i for c in cells for i in c["items"]]
    assert len(ids) == len(set(ids)) == 50, "the folds' test items partition the data set"
    assert "not better than chance" in (folder / "report.md").read_text().lower() or all(
        c["test"]["better_than_chance"] for c in cells
    )
