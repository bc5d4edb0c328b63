"""The sweep driver without a Ray cluster (:mod:`robustdx.flows.tune.driver`): presets and their base configs, the
sweep folder a resume must agree with, resources no node has, and an import that starts no Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustdx.core.config import ConfigError
from robustdx.core.config.sweep import Objective, parse_sweep
from robustdx.flows.tune.driver import check_resources, load_sweep, prepare_folder, trial_resources
from robustdx.flows.tune.space import trial_config
from tests.support.configs import tiny_raw
from tests.support.paths import REPO
from tests.support.sweeps import EPS2, EPS4, EPS8, run_base, sweep_raw

pytestmark = pytest.mark.unit

PRESETS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_load_with_their_base_config(path: Path) -> None:
    sweep, base = load_sweep(path)
    assert sweep.base.is_absolute() and sweep.base.is_file()
    assert sweep.objective is Objective.ROBUST_MEAN and sweep.val_robust_n > 0
    assert set(sweep.space.dimensions()) >= {"eps", "steps", "lr"}
    # every preset keeps the serving eps out of the space: trials differ in the *training* attack only
    corner = {n: d.extremes()[-1] for n, d in sweep.space.dimensions().items()}
    cfg = trial_config(sweep, base, corner)
    assert cfg.eval_attack == base.eval_attack and cfg.attack.eps == pytest.approx(corner["eps"])


def test_presets_cover_the_requested_realistic_spaces() -> None:
    for name in ("pcam", "camelyon"):
        sweep, _ = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
        assert sweep.space.eps.choices == pytest.approx([EPS2, EPS4, EPS8])
        assert sweep.space.steps.choices == [3, 5, 7, 10]
        assert (sweep.space.lr.low, sweep.space.lr.high) == (1e-4, 3e-3)
        assert sweep.resources_per_trial.gpu == 1 and sweep.scheduler == "asha"


def test_load_sweep_resolves_base_next_to_the_file_and_appends_run_overrides(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "d", tmp_path / "r")))
    path = tmp_path / "sub" / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_raw(overrides=["pretrain.epochs=3"])))
    sweep, base = load_sweep(path, ["num_samples=2"], ["finetune.epochs=5"])
    assert sweep.base == (tmp_path / "sub" / "base.yaml").resolve() and sweep.num_samples == 2
    assert sweep.overrides == ["pretrain.epochs=3", "finetune.epochs=5"]
    assert (base.pretrain.epochs, base.finetune.epochs) == (3, 5)
    monkeypatch.chdir(tmp_path)  # a base not next to the file is read from the working directory
    path.write_text(yaml.safe_dump(sweep_raw(base="sub/base.yaml")))
    assert load_sweep(path)[0].base == (tmp_path / "sub" / "base.yaml").resolve()
    path.write_text(yaml.safe_dump(sweep_raw(base="nope.yaml")))
    with pytest.raises(ConfigError, match="base 'nope.yaml' does not exist \\(looked next to the sweep file"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_sweep(path)


def test_a_resumed_sweep_must_have_the_same_configuration(tmp_path: Path) -> None:
    base = run_base(tmp_path)
    sweep = parse_sweep(sweep_raw(storage_path=str(tmp_path / "sweeps")))
    prepare_folder(sweep, base, resume=True, log=print)
    prepare_folder(sweep.model_copy(update={"num_cpus": 4}), base.model_copy(update={"progress": False}), True, print)
    changed = sweep.model_copy(update={"num_samples": 9})
    with pytest.raises(ConfigError, match="differs in: sweep.num_samples\\).*--no-resume"):
        prepare_folder(changed, base, resume=True, log=print)
    other_base = base.model_copy(update={"seed": 5})
    with pytest.raises(ConfigError, match="differs in: base.seed"):
        prepare_folder(sweep, other_base, resume=True, log=print)
    (sweep.experiment_dir / "runs").mkdir()
    prepare_folder(changed, base, resume=False, log=print)  # --no-resume deletes the old sweep
    assert not (sweep.experiment_dir / "runs").exists()
    assert json.loads((sweep.experiment_dir / "sweep.json").read_text())["sweep"]["num_samples"] == 9


def test_resources_that_no_node_has_are_refused_locally_and_warned_about_on_a_cluster() -> None:
    need = trial_resources(parse_sweep(sweep_raw(resources_per_trial={"cpu": 4, "gpu": 1})))
    assert need == {"cpu": 4, "gpu": 1}
    check_resources(need, {"CPU": 8.0, "GPU": 2.0}, strict=True, log=print)
    with pytest.raises(ConfigError, match=r"a trial needs 4 CPU, 1 GPU but Ray has 2 CPU, 0 GPU.*resources_per_trial"):
        check_resources(need, {"CPU": 2.0}, strict=True, log=print)
    logged: list[str] = []
    check_resources(need, {"CPU": 2.0}, strict=False, log=logged.append)
    assert logged and logged[0].startswith("warning: a trial needs 4 CPU, 1 GPU")
    auto = trial_resources(parse_sweep(sweep_raw()))
    assert auto["cpu"] == 1 and auto["gpu"] == (1 if __import__("torch").cuda.is_available() else 0)


def test_importing_the_module_starts_no_ray() -> None:
    modules = ", ".join(f"robustdx.flows.tune.{m}" for m in ("space", "trainable", "results", "driver"))
    modules += ", robustdx.cli.app"  # nor does the command line that runs it
    code = f"import sys, {modules}; assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
