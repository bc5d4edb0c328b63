"""Every benchmark script runs its real code path in ``--quick`` mode, so none can rot between real runs.

Each script is run as a user runs it (``python benchmarks/NAME.py --quick``) into a temporary JSON; the
test checks that the result carries the measured numbers and the provenance every result must have
(commit, machine, load average), and that ``--quick`` never writes over the committed results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustdx.core.data.synthetic import histology_patch
from tests.support.paths import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = REPO / "benchmarks"


def run_quick(script: str, out: Path, *extra: str, timeout: float = 600) -> dict:
    committed = BENCH / "results" / f"{script}.json"
    before = committed.read_bytes() if committed.exists() else None
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (committed.read_bytes() if committed.exists() else None) == before, "--quick wrote over a committed result"
    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert len(result["commit"].split("+")[0]) == 40
    assert result["machine"]["cpu_count"] >= 1
    assert len(result["loadavg_before"]) == 3 and len(result["loadavg_after"]) == 3
    return result


@pytest.fixture(scope="module")
def tiny_pcam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PCam-layout ImageFolder (train/valid x 0/1, JPEG) of synthetic 32 px patches."""
    root = tmp_path_factory.mktemp("pcam")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("valid", 8)):
        for label in (0, 1):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(n):
                img = (histology_patch(rng, bool(label), 32) * 255).round().astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    return root


def _check_headline(r: dict) -> dict:
    h = r["headline"]
    assert h["robustdx"] > 0 and h["baseline_value"] > 0
    assert h["ratio"] == pytest.approx(h["robustdx"] / h["baseline_value"])
    assert isinstance(h["met"], bool) and h["goal"].startswith(">=")
    return h


def test_train_throughput_quick(tmp_path: Path) -> None:
    r = run_quick("train_throughput", tmp_path / "r.json")
    assert r["settings"]["arch"] == "test_cnn"
    h = _check_headline(r)
    assert h["robustdx"] == pytest.approx(r["images_per_s"]["robustdx"])
    assert len(r["step_seconds"]["authors"]["values"]) == r["settings"]["repeats"]
    assert 0 < r["fraction_of_matmul_peak"]["robustdx"] < 1
    assert r["gflop_per_step"]["authors"] > r["gflop_per_step"]["robustdx"] > 0  # the baseline also computes weight gradients


def test_robust_eval_quick(tmp_path: Path, tiny_pcam: Path) -> None:
    r = run_quick("robust_eval", tmp_path / "r.json", "--data", str(tiny_pcam), "--runs", str(tmp_path / "runs"))
    _check_headline(r)
    for eps in ("2/255", "8/255"):
        res = r["results"][eps]
        assert set(res["robust_acc"]) == {"torchattacks", "robustdx"}
        lo, hi = res["wilson95"]["robustdx"]
        assert 0 <= lo <= res["robust_acc"]["robustdx"] <= hi <= 1


def test_ig_latency_quick(tmp_path: Path, tiny_pcam: Path) -> None:
    r = run_quick("ig_latency", tmp_path / "r.json", "--data", str(tiny_pcam), "--runs", str(tmp_path / "runs"))
    _check_headline(r)
    target = r["settings"]["accuracy_target"]
    for side in ("captum", "robustdx"):
        acc = r["accuracy_at_chosen_steps"][side]
        assert acc["mean"] <= target["mean"] and acc["worst"] <= target["worst"]
        assert r["steps"][side] in r["settings"]["step_grid"]
        assert r["seconds_per_image_batch"][side]["median"] > 0


def test_asha_vs_full_quick(tmp_path: Path) -> None:
    r = run_quick("asha_vs_full", tmp_path / "r.json", "--storage", str(tmp_path / "sweeps"))
    assert r["same_configurations"] is True
    assert r["asha"]["total_trial_epochs"] <= r["full"]["total_trial_epochs"]
    assert len(r["full"]["trials"]) == 2


def test_serve_load_quick(tmp_path: Path) -> None:
    r = run_quick("serve_load", tmp_path / "r.json")
    for side in ("batching", "no_batching"):
        (run,) = r["runs"][side]
        assert run["status_codes"] == {"200": run["requests"]} and run["throughput_rps"] > 0
    assert r["runs"]["no_batching"][0]["mean_batch_size"] == 1.0  # batching off: one image per pass
    assert r["bare_model_images_per_s"]["median"] > 0 and r["service_over_bare"] > 0
    memory = r["memory"]
    assert memory["status_codes"] == {"200": 3000} and memory["same_worker_pid"] is True
    assert [n for n, _ in memory["rss_mb_every_1000"]] == [0, 1000, 2000, 3000]
    assert {"ratio", "met", "requires_service_over_bare_ge_70pct", "requires_rss_slope_lt_1mb"} <= set(r["headline"])
