"""``robustdx sweep`` (:mod:`robustdx.cli.sweep`): exit codes, dry run and help."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robustdx.cli.app import app
from tests.support.configs import tiny_raw
from tests.support.sweeps import sweep_raw

pytestmark = pytest.mark.unit


def test_sweep_exit_codes_dry_run_and_help(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "d", tmp_path / "r")))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_raw(storage_path=str(tmp_path / "sweeps"))))
    done = runner.invoke(app, ["sweep", "-c", str(path), "--dry-run", "--num-samples", "3", "--run-set", "finetune.epochs=7"])
    assert done.exit_code == 0, done.output
    assert "num_samples: 3" in done.output and "would run 3 trials" in done.output and "epochs: 7" in done.output
    assert not (tmp_path / "sweeps").exists(), "a dry run writes nothing"

    bad = copy.deepcopy(sweep_raw())
    bad["space"]["eps"] = ["8"]
    path.write_text(yaml.safe_dump(bad))
    done = runner.invoke(app, ["sweep", "-c", str(path)])
    assert done.exit_code == 2 and "did you mean 8/255" in done.output
    done = runner.invoke(app, ["sweep", "-c", str(tmp_path / "nope.yaml")])
    assert done.exit_code == 2 and "nope.yaml" in done.output
    done = runner.invoke(app, ["sweep", "--num-samples", "0", "-c", str(path)])
    assert done.exit_code == 2 and "--num-samples" in done.output  # validated by the CLI before anything loads
    done = runner.invoke(app, ["sweep", "--help"])
    assert done.exit_code == 0 and "RAY_ADDRESS" in done.output
