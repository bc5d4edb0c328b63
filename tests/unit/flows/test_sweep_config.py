"""Sweep configuration: presets, validation messages, the Tune search space, trial run configs, result rows,
run-folder restoration and the command line — everything of ``robustdx.flows.tune`` that needs no Ray cluster."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustdx.core.config import ConfigError, RunConfig, parse_config
from robustdx.flows.tune import driver as sweeps
from robustdx.flows.tune.driver import (
    Objective,
    SweepConfig,
    check_space,
    epochs_on_disk,
    load_sweep,
    parse_sweep,
    prepare_folder,
    restore_run_dir,
    trial_config,
    trial_row,
)
from tests.conftest import REPO, tiny_raw

pytestmark = pytest.mark.unit

PRESETS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
EPS2, EPS4, EPS8 = 2 / 255, 4 / 255, 8 / 255


def _raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "s",
        "base": "base.yaml",
        "space": {"eps": ["2/255", "8/255"], "steps": {"low": 2, "high": 5}, "lr": {"low": 1e-4, "high": 1e-2}},
    }
    raw.update(over)
    return raw


def _base(tmp_path: Path, **over: Any) -> RunConfig:
    return parse_config(tiny_raw(tmp_path / "data", tmp_path / "runs", **over))


def _error(raw: dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_sweep(raw, overrides or [])
    return str(err.value)


# ------------------------------------------------------------------------------------------ presets
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


# ------------------------------------------------------------------------------------------ validation
def test_dimension_forms_and_eps_fractions() -> None:
    sweep = parse_sweep(
        _raw(space={"eps": {"choices": ["4/255", 0.01]}, "steps": [3, 5], "temperature": {"low": 0.05, "high": 0.5}})
    )
    assert sweep.space.eps.choices == pytest.approx([EPS4, 0.01])
    assert sweep.space.steps.choices == [3, 5]
    assert (sweep.space.temperature.low, sweep.space.temperature.high) == (0.05, 0.5)
    assert list(sweep.space.dimensions()) == ["eps", "steps", "temperature"]
    ranged = parse_sweep(_raw(space={"eps": {"low": "1/255", "high": "8/255"}}))
    assert ranged.space.eps.extremes() == pytest.approx([1 / 255, EPS8])


def test_defaults() -> None:
    sweep = parse_sweep(_raw())
    assert (sweep.scheduler, sweep.search, sweep.objective, sweep.val_robust_n) == ("asha", "optuna", "robust_mean", 64)
    assert sweep.resources_per_trial.gpu is None and sweep.space.lr.finetune_lr_scale == 1.0
    assert sweep.storage_path == Path("runs/sweeps") and sweep.experiment_dir == (Path("runs/sweeps") / "s").resolve()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"space": {"eps": [8]}}, r"space\.eps\.choices\.0: .*did you mean 8/255\?"),
        ({"space": {"eps": {"low": "4/255", "high": "2/255"}}}, r"low must be below high"),
        ({"space": {"eps": {"choices": ["2/255"], "low": 0.0}}}, r"either choices or low/high, not both"),
        ({"space": {"eps": {"low": 0.0}}}, r"a range needs both low and high"),
        ({"space": {"eps": {"choices": []}}}, r"choices must not be empty"),
        ({"space": {"steps": 5}}, r"space\.steps: .*single value 5.*use `overrides`"),
        ({"space": {"steps": [0, 3]}}, r"space\.steps\.choices\.0: .*greater than or equal to 1"),
        ({"space": {"lr": {"low": 0, "high": 1e-3}}}, r"space\.lr\.low: .*greater than 0"),
        (
            {"space": {"lr": {"low": 1e-4, "high": 1e-3, "finetune_scale": 2}}},
            r"unknown key\. Did you mean 'finetune_lr_scale'\?",
        ),
        (
            {"space": {"eps": {"lo": 0.0, "high": 0.1}}},
            r"space\.eps\.lo: unknown key\. Did you mean 'low'\? Valid: choices, low, high",
        ),
        (
            {"space": {"epsilon": ["2/255"]}},
            r"space\.epsilon: unknown key\. Did you mean 'eps'\? Valid: eps, steps, lr, temperature",
        ),
        ({"space": {}}, r"search space is empty: give at least one of eps, steps, lr, temperature"),
        ({"num_sample": 3}, r"num_sample: unknown key\. Did you mean 'num_samples'\?"),
        ({"scheduler": "hyperband"}, r"scheduler: .*'asha' or 'fifo'.*\(got 'hyperband'\)"),
        ({"search": "grid"}, r"search: .*'optuna' or 'random'"),
        ({"objective": "robust", "val_robust_n": 0}, r"objective=robust needs val_robust_n > 0"),
        ({"name": "../up"}, r"name: String should match pattern"),
        ({"asha": {"reduction_factor": 1}}, r"asha\.reduction_factor: .*greater than 1"),
    ],
)
def test_validation_errors_name_the_key_and_the_fix(change: dict[str, Any], expected: str) -> None:
    assert __import__("re").search(expected, _error(_raw(**change)))


def test_missing_keys_and_overrides() -> None:
    msg = _error({"space": {"eps": ["2/255"]}})
    assert "name: Field required" in msg and "base: Field required" in msg
    sweep = parse_sweep(_raw(), ["num_samples=3", "scheduler=fifo", "space.eps=[4/255]"])
    assert (sweep.num_samples, sweep.scheduler) == (3, "fifo") and sweep.space.eps.choices == pytest.approx([EPS4])
    assert "override 'num_samples' is not of the form key=value" in _error(_raw(), ["num_samples"])


def test_objectives_read_validation_metrics_and_pick_a_matching_monitor() -> None:
    assert {o.value: o.metric for o in Objective} == {"robust_mean": "val_score", "clean": "val_acc", "robust": "val_robust_acc"}
    assert [o.monitor for o in Objective] == ["robust_mean", "acc", "robust_mean"]
    assert parse_sweep(_raw(objective="clean", val_robust_n=0)).val_robust_n == 0  # clean needs no attacked images


# ------------------------------------------------------------------------------------------ Tune space
def test_param_space_domains() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    space = sweeps.param_space(parse_sweep(_raw(space={**_raw()["space"], "temperature": [0.1, 0.2]})).space)
    assert isinstance(space["eps"], Categorical) and space["eps"].categories == pytest.approx([EPS2, EPS8])
    assert isinstance(space["temperature"], Categorical)
    assert isinstance(space["lr"], Float) and type(space["lr"].get_sampler()).__name__ == "_LogUniform"
    assert (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-2)
    assert isinstance(space["steps"], Integer)
    steps = set(space["steps"].sample(size=300, random_state=0))
    assert steps == {2, 3, 4, 5}, "an integer range includes high"
    eps = sweeps.param_space(parse_sweep(_raw(space={"eps": {"low": "1/255", "high": "8/255"}})).space)["eps"]
    assert isinstance(eps, Float) and type(eps.get_sampler()).__name__ == "_Uniform"


# ------------------------------------------------------------------------------------------ trial configs
def test_trial_config_changes_the_training_attack_only(tmp_path: Path) -> None:
    base = _base(tmp_path, attack={"eps": "4/255", "steps": 2, "step_size": "1/255"}, eval_attack={"eps": "4/255", "steps": 7})
    sweep = parse_sweep(_raw())
    cfg = trial_config(sweep, base, {"eps": EPS8, "steps": 5, "lr": 2e-3}, name="t1", output_dir=tmp_path / "x", progress=False)
    assert (cfg.attack.eps, cfg.attack.steps) == (pytest.approx(EPS8), 5)
    assert cfg.attack.step_size is None and cfg.attack.alpha == pytest.approx(2.5 * EPS8 / 5)  # the step follows eps/steps
    assert cfg.eval_attack == base.eval_attack and cfg.eval_attack.eps == pytest.approx(EPS4)  # serving eps fixed
    assert cfg.pretrain.lr == cfg.finetune.lr == 2e-3
    assert (cfg.name, cfg.output_dir, cfg.progress) == ("t1", tmp_path / "x", False)
    assert (cfg.val_robust_n, cfg.monitor) == (64, "robust_mean")
    unchanged = {k: v for k, v in base.model_dump().items() if k not in ("attack", "pretrain", "finetune", "name", "output_dir")}
    changed = cfg.model_dump()
    assert all(changed[k] == v for k, v in unchanged.items() if k not in ("progress", "val_robust_n", "monitor"))
    assert base.attack.step_size == pytest.approx(1 / 255), "the base config is not modified"
    only_eps = trial_config(sweep, base, {"eps": EPS2})
    assert only_eps.attack.step_size is None and only_eps.attack.steps == base.attack.steps == 2


def test_finetune_lr_scale_and_temperature(tmp_path: Path) -> None:
    base = _base(tmp_path)
    space = {"lr": {"low": 1e-4, "high": 1e-2, "finetune_lr_scale": 3}, "temperature": [0.05, 0.2]}
    cfg = trial_config(parse_sweep(_raw(space=space)), base, {"lr": 1e-3, "temperature": 0.05})
    assert cfg.pretrain.lr == 1e-3 and cfg.finetune.lr == pytest.approx(3e-3) and cfg.pretrain.temperature == 0.05
    space["lr"]["finetune_lr_scale"] = None
    cfg = trial_config(parse_sweep(_raw(space=space)), base, {"lr": 1e-3})
    assert cfg.finetune.lr == base.finetune.lr
    single = _base(tmp_path, recipe="adv_ce")
    assert trial_config(parse_sweep(_raw(space=space)), single, {"lr": 1e-3}).pretrain.lr == 1e-3
    clean = trial_config(parse_sweep(_raw(objective="clean", val_robust_n=0)), base, {})
    assert (clean.monitor, clean.val_robust_n) == ("acc", 0)
    with pytest.raises(ConfigError, match="unknown sweep parameter.*'momentum'"):
        trial_config(parse_sweep(_raw()), base, {"momentum": 0.9})


@pytest.mark.parametrize(
    "run_over, space, expected",
    [
        ({"recipe": "adv_supcon"}, None, r"recipe 'adv_supcon' trains an encoder without a classifier.*recipe=adv_supcon_ft"),
        ({"recipe": "adv_ce"}, {"temperature": [0.1, 0.2]}, r"space\.temperature: recipe 'adv_ce' has no SupCon stage"),
        (
            {"attack": {"name": "fgsm_rs", "eps": "4/255"}},
            {"steps": [1, 3]},
            r"invalid run config at \{'steps': 3\}.*fgsm_rs takes",
        ),
        ({}, {"lr": {"low": 1e-3, "high": 0.5, "finetune_lr_scale": 4}}, r"invalid run config at \{'lr': 0\.5\}.*finetune\.lr"),
    ],
)
def test_check_space_refuses_spaces_that_cannot_work(
    tmp_path: Path, run_over: dict[str, Any], space: dict[str, Any] | None, expected: str
) -> None:
    sweep = parse_sweep(_raw(space=space) if space else _raw())
    with pytest.raises(ConfigError, match=f"(?s){expected}"):
        check_space(sweep, _base(tmp_path, **run_over))


def test_load_sweep_resolves_base_next_to_the_file_and_appends_run_overrides(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "d", tmp_path / "r")))
    path = tmp_path / "sub" / "sweep.yaml"
    path.write_text(yaml.safe_dump(_raw(overrides=["pretrain.epochs=3"])))
    sweep, base = load_sweep(path, ["num_samples=2"], ["finetune.epochs=5"])
    assert sweep.base == (tmp_path / "sub" / "base.yaml").resolve() and sweep.num_samples == 2
    assert sweep.overrides == ["pretrain.epochs=3", "finetune.epochs=5"]
    assert (base.pretrain.epochs, base.finetune.epochs) == (3, 5)
    monkeypatch.chdir(tmp_path)  # a base not next to the file is read from the working directory
    path.write_text(yaml.safe_dump(_raw(base="sub/base.yaml")))
    assert load_sweep(path)[0].base == (tmp_path / "sub" / "base.yaml").resolve()
    path.write_text(yaml.safe_dump(_raw(base="nope.yaml")))
    with pytest.raises(ConfigError, match="base 'nope.yaml' does not exist \\(looked next to the sweep file"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_sweep(path)


# ------------------------------------------------------------------------------------------ results
def _report(epoch: int, score: float, pid: int, start: int, iteration: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "score": score,
        "epoch": epoch,
        "epochs_done": 2 + epoch,
        "session_start_epochs": start,
        "pid": pid,
        "training_iteration": iteration or epoch,
        "val_acc": score + 0.1,
        "val_robust_acc": score - 0.1,
        **extra,
    }


def test_trial_row_best_epoch_and_work_across_sessions() -> None:
    # 2 pretrain + 4 fine-tuning epochs; the first worker reported epochs 1-2 and died after training epoch 3;
    # the second resumed from the epoch-2 checkpoint (4 epochs on disk) and trained epochs 3 and 4
    reports = [_report(1, 0.6, 10, 0), _report(2, 0.8, 10, 0), _report(3, 0.7, 11, 4), _report(4, 0.75, 11, 4)]
    row = trial_row("t0", {"eps": EPS4}, reports, None, epochs=6)
    assert list(row)[:3] == ["trial_id", "status", "eps"]
    assert row["status"] == "completed" and row["score"] == 0.8 and row["best_epoch"] == 2
    assert (row["val_acc"], row["val_robust_acc"]) == (pytest.approx(0.9), pytest.approx(0.7))
    assert (row["iterations"], row["trial_epochs"], row["epochs_trained"], row["sessions"]) == (4, 6, 4 + 2, 2)
    stopped = trial_row("t1", {"eps": EPS4}, reports[:2], None, epochs=6)
    assert stopped["status"] == "stopped" and stopped["trial_epochs"] == 4
    assert trial_row("t2", {"eps": EPS4}, [], "ValueError: boom", epochs=6)["status"] == "error"
    none = trial_row("t3", {"eps": EPS4}, [], None, epochs=6)
    assert none["status"] == "not started" and none["score"] is None and none["trial_epochs"] is None


def test_csv_and_plot(tmp_path: Path) -> None:
    rows = [
        trial_row("a", {"eps": EPS2, "lr": 1e-3}, [_report(1, 0.6, 1, 0), _report(2, 0.7, 1, 0)], None, 4),
        trial_row("b", {"eps": EPS8, "lr": 3e-4}, [_report(1, 0.5, 2, 0)], None, 4),
        trial_row("c", {"eps": EPS4, "lr": 2e-3}, [], "RuntimeError: x", 4),
    ]
    path = sweeps.write_csv(tmp_path / "t.csv", rows)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("trial_id,status,eps,lr,score,") and len(lines) == 4
    png = sweeps.plot_scores(tmp_path / "p.png", rows, ["eps", "lr"], Objective.ROBUST_MEAN)
    assert png.read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------ run folders
def _fake_run(cfg: RunConfig, pre_epochs: int, ft_epochs: int | None) -> None:
    pre, ft = cfg.run_dir / "1-adv_supcon", cfg.run_dir / "2-finetune"
    pre.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text("x")
    (pre / "metrics.jsonl").write_text("{}\n" * pre_epochs)
    if pre_epochs == cfg.pretrain.epochs:
        (pre / "result.json").write_text("{}")
    if ft_epochs is not None:
        ft.mkdir()
        (ft / "metrics.jsonl").write_text("{}\n" * ft_epochs)
        if ft_epochs == cfg.finetune.epochs:
            (ft / "result.json").write_text("{}")


class _Checkpoint:
    """Stands in for ray.tune.Checkpoint: a folder whose contents are copied out."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def to_directory(self, target: str) -> None:
        import shutil

        shutil.copytree(self.path, target, dirs_exist_ok=True)


def test_restore_run_dir_follows_the_checkpoint_or_redoes_the_final_stage(tmp_path: Path) -> None:
    cfg = _base(tmp_path, pretrain__epochs=2, finetune__epochs=3)
    _fake_run(cfg, 2, 3)  # the worker got further (finished fine-tuning) than Tune recorded
    assert epochs_on_disk(cfg) == 5
    ckpt_cfg = cfg.model_copy(update={"output_dir": tmp_path / "ckpt"})
    _fake_run(ckpt_cfg, 2, 1)
    restore_run_dir(cfg, _Checkpoint(ckpt_cfg.run_dir))
    assert epochs_on_disk(cfg) == 3, "the checkpoint replaces the folder"

    (cfg.run_dir / "bundle").mkdir()
    (cfg.run_dir / "metrics.json").write_text("{}")
    restore_run_dir(cfg, None)  # no checkpoint: Tune restarts at iteration 0, so the final stage starts over
    assert epochs_on_disk(cfg) == 2 and (cfg.run_dir / "1-adv_supcon" / "result.json").is_file()
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["1-adv_supcon", "config.yaml"]
    partial = cfg.model_copy(update={"output_dir": tmp_path / "partial"})
    _fake_run(partial, 1, None)  # killed during pretraining: its progress is kept
    restore_run_dir(partial, None)
    assert epochs_on_disk(partial) == 1


def test_reporter_reports_final_stage_epochs_with_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    from ray import tune

    sent: list[tuple[dict[str, Any], Any]] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: sent.append((metrics, checkpoint)))
    monkeypatch.setattr(tune.Checkpoint, "from_directory", staticmethod(lambda path: path))
    cfg = _base(tmp_path, pretrain__epochs=3, finetune__epochs=2)
    reporter = sweeps._TuneReporter(cfg, Objective.ROBUST_MEAN, session_start=1)
    reporter({"stage": "adv_supcon", "epoch": 2, "val_centroid_acc": 0.9})
    assert sent == [], "pretraining epochs are not reported"
    reporter({"stage": "finetune", "epoch": 1, "val_acc": 0.8, "val_robust_acc": 0.4, "val_score": 0.6, "lr": 1e-3})
    metrics, checkpoint = sent[0]
    assert metrics == {
        "score": 0.6,
        "stage": "finetune",
        "epoch": 1,
        "epochs_done": 4,
        "session_start_epochs": 1,
        "val_acc": 0.8,
        "val_robust_acc": 0.4,
        "val_score": 0.6,
    }
    assert checkpoint == str(cfg.run_dir)


def test_a_resumed_sweep_must_have_the_same_configuration(tmp_path: Path) -> None:
    base = _base(tmp_path)
    sweep = parse_sweep(_raw(storage_path=str(tmp_path / "sweeps")))
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
    need = sweeps.trial_resources(parse_sweep(_raw(resources_per_trial={"cpu": 4, "gpu": 1})))
    assert need == {"cpu": 4, "gpu": 1}
    sweeps.check_resources(need, {"CPU": 8.0, "GPU": 2.0}, strict=True, log=print)
    with pytest.raises(ConfigError, match=r"a trial needs 4 CPU, 1 GPU but Ray has 2 CPU, 0 GPU.*resources_per_trial"):
        sweeps.check_resources(need, {"CPU": 2.0}, strict=True, log=print)
    logged: list[str] = []
    sweeps.check_resources(need, {"CPU": 2.0}, strict=False, log=logged.append)
    assert logged and logged[0].startswith("warning: a trial needs 4 CPU, 1 GPU")
    auto = sweeps.trial_resources(parse_sweep(_raw()))
    assert auto["cpu"] == 1 and auto["gpu"] == (1 if __import__("torch").cuda.is_available() else 0)


# ------------------------------------------------------------------------------------------ command line
def test_importing_the_module_starts_no_ray() -> None:
    code = "import sys, robustdx.flows.tune.driver; assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_main_exit_codes_dry_run_and_help(tmp_path: Path, capsys) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "d", tmp_path / "r")))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_raw(storage_path=str(tmp_path / "sweeps"))))
    assert sweeps.main(["-c", str(path), "--dry-run", "--num-samples", "3", "--run-set", "finetune.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "num_samples: 3" in out and "would run 3 trials" in out and "epochs: 7" in out
    assert not (tmp_path / "sweeps").exists(), "a dry run writes nothing"

    bad = copy.deepcopy(_raw())
    bad["space"]["eps"] = ["8"]
    path.write_text(yaml.safe_dump(bad))
    assert sweeps.main(["-c", str(path)]) == 2
    assert "did you mean 8/255" in capsys.readouterr().err
    assert sweeps.main(["-c", str(tmp_path / "nope.yaml")]) == 2
    with pytest.raises(SystemExit) as exit_:
        sweeps.main(["--help"])
    assert exit_.value.code == 0 and "RAY_ADDRESS" in capsys.readouterr().out


def test_sweep_config_schema_is_strict() -> None:
    assert SweepConfig.model_config["extra"] == "forbid"
    with pytest.raises(ValueError):
        SweepConfig.model_validate({**_raw(), "unknown": 1})


def test_best_row_breaks_ties_by_trial_order_not_finishing_order() -> None:
    from robustdx.flows.tune.driver import best_row

    rows = [
        {"trial_id": "ab12c_00002", "score": 0.9},
        {"trial_id": "ab12c_00001", "score": 0.9},
        {"trial_id": "ab12c_00000", "score": 0.8},
    ]
    assert best_row(rows)["trial_id"] == "ab12c_00001"
    assert best_row(list(reversed(rows)))["trial_id"] == "ab12c_00001"
    assert best_row([*rows, {"trial_id": "ab12c_00003", "score": 0.95}])["trial_id"] == "ab12c_00003"
