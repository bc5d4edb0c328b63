"""The sweep's command line (:mod:`robustdx.flows.tune.cli`): exit codes, dry run and help."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from robustdx.flows.tune.cli import main
from tests.support.configs import tiny_raw
from tests.support.sweeps import sweep_raw

pytestmark = pytest.mark.unit


def test_main_exit_codes_dry_run_and_help(tmp_path: Path, capsys) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "d", tmp_path / "r")))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_raw(storage_path=str(tmp_path / "sweeps"))))
    assert main(["-c", str(path), "--dry-run", "--num-samples", "3", "--run-set", "finetune.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 3" in out and "would run 3 trials" in out and "epochs: 7" in out
    assert not (tmp_path / "sweeps").exists(), "a dry run writes nothing"

    bad = copy.deepcopy(sweep_raw())
    bad["space"]["eps"] = ["8"]
    path.write_text(yaml.safe_dump(bad))
    assert main(["-c", str(path)]) == 2
    assert "did you mean 8/255" in capsys.readouterr().err
    assert main(["-c", str(tmp_path / "nope.yaml")]) == 2
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "RAY_ADDRESS" in capsys.readouterr().out
