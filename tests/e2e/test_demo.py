"""`robustdx demo` and `robustdx serve-demo` as `make demo` runs them: in a folder with no
``runs/`` at all (a fresh clone), then again over what the first run left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustdx.core.release.pointer import append_audit, read_production
from robustdx.service.demo import rejection_note
from tests.support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def tiny_sweep(folder: Path) -> Path:
    """The demo sweep cut to one short trial (same base preset, same search space)."""
    sweep = yaml.safe_load((REPO / "configs" / "sweeps" / "demo.yaml").read_text())
    sweep.update(base=str(REPO / "configs" / "demo.yaml"), num_samples=1, search="random", scheduler="fifo", val_robust_n=16)
    sweep["overrides"] = [
        *sweep["overrides"],
        "pretrain.epochs=1",
        "finetune.epochs=1",
        "pretrain.max_steps_per_epoch=3",
        "finetune.max_steps_per_epoch=3",
        "n_reference=16",
    ]
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def test_demo_from_nothing_then_again_over_its_leftovers(tmp_path: Path) -> None:
    runs, data = tmp_path / "runs", tmp_path / "data"
    assert not runs.exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BENTOML_", "RAY_"))}
    demo = [sys.executable, "-m", "robustdx.cli", "demo", "--sweep", str(tiny_sweep(tmp_path))]
    demo += ["--data", str(data), "--runs", str(runs)]
    home = runs / "bentoml"

    first = run(demo, env)
    assert "written" in first.stdout and "promoted" in first.stdout.lower()
    tag1 = read_production(home).tag
    assert f"Bento:   robustdx:{tag1.partition(':')[2]}" in first.stdout  # promotion built the model's Bento
    assert re.search(r"data:    snapshot [0-9a-f]{16} \(\d+ base \+ 0 clinician images\)", first.stdout), first.stdout
    assert (home / "bentos" / "robustdx" / tag1.partition(":")[2] / "bento.yaml").is_file()
    assert "MLflow:  run " in first.stdout

    second = run(demo, env)  # runs/ (Prefect database, sweeps, store) and the data set are left from the first
    assert "already holds this synthetic camelyon17 data set" in second.stdout
    tag2 = read_production(home).tag
    assert tag2 != tag1, "the second run's model must be promoted (same settings, same scores) or said to be refused"
    assert len(list((runs / "retrain").iterdir())) == 2 and len(list((runs / "sweeps").glob("retrain-*"))) == 2

    served = run(
        [sys.executable, "-m", "robustdx.cli", "serve-demo", "--out", str(tmp_path / "serve"), "--data", str(data)],
        {**env, "BENTOML_HOME": str(home)},
    )
    assert f"serving production model {tag2}" in served.stdout and "note:" not in served.stdout
    answer = json.loads((tmp_path / "serve" / "predict.json").read_text())
    assert answer[0]["label"] in ("normal", "tumor")
    assert (tmp_path / "serve" / "heatmap.png").stat().st_size > 0


def test_a_rejected_candidate_is_never_passed_off_as_the_served_model(tmp_path: Path) -> None:
    assert rejection_note(tmp_path, "robustdx-classifier:old") is None
    append_audit(tmp_path, {"action": "promoted", "tag": "robustdx-classifier:old"})
    assert rejection_note(tmp_path, "robustdx-classifier:old") is None
    append_audit(tmp_path, {"action": "rejected", "bundle": "runs/retrain/x/bundle", "summary": "REJECTED: robust_acc fell"})
    note = rejection_note(tmp_path, "robustdx-classifier:old")
    assert note is not None and "runs/retrain/x/bundle" in note and "earlier run promoted" in note
    append_audit(tmp_path, {"action": "rolled_back", "tag": "robustdx-classifier:old"})  # not a decision on a candidate
    assert rejection_note(tmp_path, "robustdx-classifier:old") is not None
