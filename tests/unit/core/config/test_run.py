"""RunConfig: presets, validation messages, overrides, YAML round trip, attack step defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from robustdx.core.config import (
    AttackConfig,
    AttackSpace,
    ConfigError,
    DatasetName,
    Recipe,
    RunConfig,
    dump_config,
    load_config,
    parse_config,
)
from tests.support.configs import tiny_raw
from tests.support.paths import REPO

pytestmark = pytest.mark.unit

PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def _raw(tmp_path: Path, **over) -> dict:
    return tiny_raw(tmp_path / "data", tmp_path / "runs", **over)


def _error(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, overrides)
    return str(err.value)


# ------------------------------------------------------------------------------------------ presets


def test_there_are_presets() -> None:
    assert PRESETS, f"no configs/*.yaml under {REPO}"


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.arch
    assert 0 <= cfg.attack.eps <= 1 and 0 <= cfg.eval_attack.eps <= 1


def test_demo_preset_values() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.name == "demo"
    assert cfg.recipe is Recipe.ADV_SUPCON_FT
    assert cfg.data.dataset is DatasetName.CAMELYON17
    assert cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.run_dir == cfg.output_dir / "demo"


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


# ------------------------------------------------------------------------------------ unknown keys


def test_unknown_nested_key_suggests(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["pretrain"]["epoch"] = 3
    msg = _error(raw)
    assert "pretrain.epoch" in msg
    assert "Did you mean 'epochs'" in msg


def test_unknown_key_in_other_sections_suggests(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["data"]["img_size"] = 32
    raw["attack"]["step"] = 3
    msg = _error(raw)
    assert "data.img_size" in msg and "Did you mean 'image_size'" in msg
    assert "attack.step" in msg and "Did you mean 'steps'" in msg


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["seeed"] = 1
    msg = _error(raw)
    assert "seeed" in msg
    assert "Did you mean 'seed'" in msg


# -------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("pretrain.lr=-1", "pretrain.lr"),
        ("data.batch_size=1", "data.batch_size"),
        ("recipe=foo", "recipe"),
        ("data.image_size=4", "data.image_size"),
        ("model.arch=resnt18", "model"),
        ("finetune.epochs=0", "finetune.epochs"),
    ],
)
def test_bad_value_names_the_field(tmp_path: Path, override: str, field: str) -> None:
    msg = _error(_raw(tmp_path), [override])
    assert f"  {field}:" in msg, msg


def test_bad_arch_suggests_nearest(tmp_path: Path) -> None:
    msg = _error(_raw(tmp_path), ["model.arch=resnt18"])
    assert "Did you mean 'resnet18'" in msg
    assert "test_cnn" in msg


def test_several_errors_reported_together(tmp_path: Path) -> None:
    msg = _error(_raw(tmp_path), ["pretrain.lr=-1", "data.batch_size=1"])
    assert "pretrain.lr" in msg and "data.batch_size" in msg


# ------------------------------------------------------------------------------------------ eps


def test_eps_fraction_string_parses(tmp_path: Path) -> None:
    cfg = parse_config(_raw(tmp_path, attack={"eps": "8/255", "steps": 4, "step_size": "2/255"}))
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.attack.alpha == pytest.approx(2 / 255)
    assert AttackConfig(eps=" 8 / 255 ").eps == pytest.approx(8 / 255)
    assert AttackConfig(eps=0.5).eps == 0.5


def test_pixel_space_eps_above_one_is_refused(tmp_path: Path) -> None:
    msg = _error(_raw(tmp_path, attack={"eps": 8}))
    assert "8/255" in msg
    assert "attack" in msg


def test_normalized_space_allows_large_eps() -> None:
    paper = AttackConfig.paper()
    assert paper.space == "normalized" and paper.eps == 0.2
    assert AttackConfig(eps=2, space="normalized").eps == 2


def test_garbage_eps_string_is_config_error(tmp_path: Path) -> None:
    msg = _error(_raw(tmp_path, attack={"eps": "lots"}))
    assert "attack.eps" in msg


def test_zero_denominator_is_config_error(tmp_path: Path) -> None:
    msg = _error(_raw(tmp_path, attack={"eps": "1/0"}))
    assert "attack.eps" in msg


# ------------------------------------------------------------------------------------- overrides


def test_overrides_apply(tmp_path: Path) -> None:
    cfg = parse_config(
        _raw(tmp_path),
        ["pretrain.epochs=3", "attack.eps=2/255", "data.augment=false", "name=other", "finetune.max_steps_per_epoch=null"],
    )
    assert cfg.pretrain.epochs == 3
    assert cfg.attack.eps == pytest.approx(2 / 255)
    assert cfg.data.augment is False
    assert cfg.name == "other"
    assert cfg.finetune.max_steps_per_epoch is None
    assert cfg.finetune.epochs == 2  # untouched


def test_override_creates_missing_section() -> None:
    cfg = parse_config({}, ["eval_attack.steps=7"])
    assert cfg.eval_attack.steps == 7


def test_override_value_may_contain_equals_sign(tmp_path: Path) -> None:
    cfg = parse_config(_raw(tmp_path), ["data.root=/tmp/a=b"])
    assert cfg.data.root == Path("/tmp/a=b")


def test_malformed_override_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_config(_raw(tmp_path), ["pretrain.epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        parse_config(_raw(tmp_path), ["name.x=1"])


def test_override_of_unknown_key_suggests(tmp_path: Path) -> None:
    msg = _error(_raw(tmp_path), ["pretrain.epoch=3"])
    assert "pretrain.epoch" in msg and "Did you mean 'epochs'" in msg


def test_load_config_applies_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path)))
    assert load_config(path, ["seed=5"]).seed == 5


def test_overrides_do_not_mutate_callers_mapping(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    before = copy.deepcopy(raw)
    parse_config(raw, ["pretrain.epochs=3"])
    assert raw == before


# ------------------------------------------------------------------------------------ round trip


def test_dump_config_reloads_equal(tmp_path: Path) -> None:
    cfg = parse_config(
        _raw(tmp_path), ["attack.eps=8/255", "eval_attack.name=fgsm_rs", "eval_attack.steps=1", "finetune.finetune_mode=linear"]
    )
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()
    assert dump_config(again) == dump_config(cfg)


def test_default_config_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "default.yaml"
    path.write_text(dump_config(RunConfig()))
    assert load_config(path) == RunConfig()


# -------------------------------------------------------------------------------- attack defaults


def test_pgd_alpha_default() -> None:
    a = AttackConfig(eps=8 / 255, steps=10)
    assert a.alpha == pytest.approx(2.5 * (8 / 255) / 10)
    b = AttackConfig(eps="4/255", steps=3)
    assert b.alpha == pytest.approx(2.5 * (4 / 255) / 3)


def test_fgsm_rs_alpha_default() -> None:
    a = AttackConfig(name="fgsm_rs", eps=8 / 255, steps=1)
    assert a.alpha == pytest.approx(1.25 * 8 / 255)


def test_explicit_step_size_wins() -> None:
    assert AttackConfig(eps=8 / 255, steps=10, step_size=0.01).alpha == pytest.approx(0.01)
    assert AttackConfig(name="fgsm_rs", eps=8 / 255, step_size="1/255").alpha == pytest.approx(1 / 255)


def test_run_config_stage_and_eval_defaults() -> None:
    cfg = RunConfig()
    assert cfg.eval_attack.steps == 20
    assert cfg.finetune.lr == pytest.approx(1e-3)


# ---------------------------------------------------------- cross-validation, class weights, monitor


def test_new_fields_default_to_the_fixed_split_unweighted_accuracy_selection() -> None:
    cfg = RunConfig()
    assert (cfg.data.cv_folds, cfg.data.cv_fold) == (None, 0)
    assert cfg.pretrain.class_weights == cfg.finetune.class_weights == "none"
    assert cfg.monitor == "acc"


def test_cv_and_class_weights_and_monitor_parse_from_overrides(tmp_path: Path) -> None:
    raw = _raw(tmp_path, data={"dataset": "busi", "root": str(tmp_path)})
    cfg = parse_config(raw, ["data.cv_folds=5", "data.cv_fold=4", "finetune.class_weights=balanced", "monitor=bal_acc"])
    assert (cfg.data.cv_folds, cfg.data.cv_fold) == (5, 4)
    assert (cfg.finetune.class_weights, cfg.pretrain.class_weights) == ("balanced", "none")
    assert cfg.monitor == "bal_acc"
    assert parse_config(raw, ["monitor=auc"]).monitor == "auc"
    assert load_config_text(dump_config(cfg)) == cfg


def load_config_text(text: str) -> RunConfig:
    return parse_config(yaml.safe_load(text))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": "busi", "cv_folds": 5, "cv_fold": 5}, "cv_fold=5 is out of range for cv_folds=5: use 0 .. 4"),
        ({"dataset": "busi", "cv_fold": 2}, "cv_fold=2 needs cv_folds"),
        ({"dataset": "camelyon17", "cv_folds": 5}, "camelyon17 splits by hospital"),
        ({"dataset": "pcam", "cv_folds": 5, "n_test": 100}, "n_test=100 would subsample the test fold"),
        ({"dataset": "busi", "cv_folds": 1}, "greater than or equal to 2"),
    ],
)
def test_bad_cross_validation_settings_name_the_fix(tmp_path: Path, data: dict, message: str) -> None:
    msg = _error(_raw(tmp_path, data={"root": str(tmp_path), **data}))
    assert "data" in msg and message in msg, msg


@pytest.mark.parametrize(("section", "key", "value"), [("pretrain", "class_weights", "inverse"), (None, "monitor", "loss")])
def test_unknown_class_weights_or_monitor_lists_the_choices(tmp_path: Path, section: str | None, key: str, value: str) -> None:
    msg = _error(_raw(tmp_path), [f"{section}.{key}={value}" if section else f"{key}={value}"])
    choices = ("'none'", "'balanced'") if section else ("'acc'", "'robust_mean'", "'bal_acc'", "'auc'")
    assert all(c in msg for c in choices), msg


def test_a_config_saved_before_these_fields_loads_equal_to_their_defaults(tmp_path: Path) -> None:
    """Run folders written before cv_folds / class_weights / the new monitors existed resume unchanged."""
    raw = RunConfig().model_dump(mode="json")
    for section, key in (("data", "cv_folds"), ("data", "cv_fold"), ("pretrain", "class_weights"), ("finetune", "class_weights")):
        del raw[section][key]
    assert RunConfig.model_validate(raw) == RunConfig()


def test_fgsm_rs_is_one_step() -> None:
    assert AttackConfig(name="fgsm_rs").steps == 1
    with pytest.raises(ValueError, match="exactly one step"):
        AttackConfig(name="fgsm_rs", steps=5)


def test_paper_preset_config() -> None:
    cfg = AttackConfig.paper()
    assert cfg.space == AttackSpace.NORMALIZED
    assert cfg.eps == pytest.approx(0.2)
    assert cfg.alpha == pytest.approx(0.01)
    assert cfg.steps == 10
    assert cfg.random_start is False
    assert cfg.clamp is False
    assert cfg.name == "pgd"
    # eps=0.2 is legal in normalised space even though it is large in pixels... and 20 would be too.
    assert AttackConfig(eps=20, space="normalized").eps == 20


def test_attack_config_rejects_pixel_eps_above_one() -> None:
    with pytest.raises(ValidationError, match="8/255"):
        AttackConfig(eps=8)
    with pytest.raises(ValidationError):
        AttackConfig(eps=-0.1)
    with pytest.raises(ValidationError):
        AttackConfig(steps=0)
    with pytest.raises(ValidationError):
        AttackConfig(name="cw")
    with pytest.raises(ValidationError):
        AttackConfig(epsilon=0.1)  # extra keys are forbidden


def test_attack_config_parses_fractions() -> None:
    assert AttackConfig(eps="8/255").eps == pytest.approx(8 / 255)
    assert AttackConfig(eps=" 4 / 255 ").eps == pytest.approx(4 / 255)
    assert AttackConfig(eps="8/255", step_size="2/255").alpha == pytest.approx(2 / 255)
    assert AttackConfig(eps=0.03).eps == pytest.approx(0.03)
    with pytest.raises(ValidationError, match="8/255"):
        AttackConfig(eps="2040/255")


# --------------------------------------------------------------------------------------------
# the two-view SupCon attack
# --------------------------------------------------------------------------------------------
