"""What every YAML-backed config shares: pixel budgets, the YAML loader, overrides, paths beside the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from robustdx.core.config.base import PixelBudget, Strict, apply_overrides, load_yaml, resolve_beside, validate
from robustdx.core.errors import ConfigError

pytestmark = pytest.mark.unit


class Inner(Strict):
    eps: PixelBudget = 0.0


class Outer(Strict):
    inner: Inner = Inner()
    name: str = "x"


@pytest.mark.parametrize(("given", "want"), [("4/255", 4 / 255), (0.5, 0.5), ("0", 0.0), (1, 1.0)])
def test_pixel_budget_parses_fractions(given: object, want: float) -> None:
    assert Inner(eps=given).eps == pytest.approx(want)


def test_pixel_budget_above_one_suggests_the_missing_255() -> None:
    with pytest.raises(ConfigError, match=r"inner\.eps: .*did you mean 8/255\?"):
        validate(Outer, {"inner": {"eps": 8}})


def test_unknown_key_names_its_section_and_the_nearest_spelling() -> None:
    with pytest.raises(ConfigError, match=r"inner\.epss: unknown key\. Did you mean 'eps'\? Valid: eps"):
        validate(Outer, {"inner": {"epss": 0.1}})


def test_validate_applies_overrides_without_touching_the_mapping() -> None:
    raw = {"inner": {"eps": "2/255"}}
    cfg = validate(Outer, raw, ["inner.eps=4/255", "name=y"])
    assert cfg.inner.eps == pytest.approx(4 / 255) and cfg.name == "y"
    assert raw == {"inner": {"eps": "2/255"}}
    with pytest.raises(ConfigError, match="not of the form key=value"):
        validate(Outer, raw, ["name"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate(Outer, ["not", "a", "mapping"])  # type: ignore[arg-type]


def test_overrides_refuse_to_descend_into_a_value() -> None:
    with pytest.raises(ConfigError, match="'name' is not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_load_yaml_names_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    seq = tmp_path / "seq.yaml"
    seq.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_yaml(seq)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_resolve_beside_prefers_the_file_next_to_the_reference(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("{}")
    ref = tmp_path / "sweep.yaml"
    assert resolve_beside(Path("base.yaml"), ref) == tmp_path / "base.yaml"
    assert resolve_beside(Path("elsewhere.yaml"), ref) == Path("elsewhere.yaml")
    assert resolve_beside(tmp_path / "abs.yaml", ref) == tmp_path / "abs.yaml"


def test_strict_models_forbid_extra_keys_and_validate_assignment() -> None:
    class M(Strict):
        n: int = 1

    assert issubclass(M, BaseModel)
    with pytest.raises(ValueError):
        M(m=2)  # type: ignore[call-arg]
    m = M()
    with pytest.raises(ValueError):
        m.n = "not a number"  # type: ignore[assignment]
