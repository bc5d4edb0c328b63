"""Name -> factory registries (core/registry.py): registration, lookup errors that list the valid names
and suggest the nearest one, deprecated names, and glob listing."""

from __future__ import annotations

import pytest

from robustdx.core.registry import Registry, suggest

pytestmark = pytest.mark.unit


def _registry() -> Registry[int]:
    reg: Registry[int] = Registry("model", deprecated={"resnet": "resnet18"})
    reg.register("resnet18")(18)
    reg.register("resnet50")(50)
    reg.register("test_cnn")(1)
    return reg


def test_register_returns_the_object_and_get_finds_it() -> None:
    reg: Registry[type] = Registry("attack")

    @reg.register("pgd")
    class PGD:
        pass

    assert PGD.__name__ == "PGD" and reg.get("pgd") is PGD
    assert "pgd" in reg and "fgsm" not in reg


def test_duplicate_names_are_refused() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="model 'resnet18' is already registered"):
        reg.register("resnet18")(0)
    assert reg.get("resnet18") == 18


def test_unknown_name_lists_the_valid_ones_and_suggests_the_nearest() -> None:
    valid = r"Valid: resnet18, resnet50, test_cnn"
    with pytest.raises(KeyError, match=r"unknown model 'resnt18'\. Did you mean 'resnet18'\? " + valid):
        _registry().get("resnt18")
    with pytest.raises(KeyError, match=r"unknown model 'zzz'\. Valid: "):
        _registry().get("zzz")


def test_deprecated_name_warns_and_redirects() -> None:
    with pytest.warns(DeprecationWarning, match="'resnet' is deprecated; use 'resnet18'"):
        assert _registry().get("resnet") == 18


def test_list_and_iteration_are_sorted_and_take_a_glob() -> None:
    reg = _registry()
    assert reg.list() == ["resnet18", "resnet50", "test_cnn"] == list(reg)
    assert reg.list("resnet*") == ["resnet18", "resnet50"]
    assert reg.list("vit*") == []


def test_suggest() -> None:
    assert suggest("adv_cee", ["adv_ce", "ce"]) == " Did you mean 'adv_ce'?"
    assert suggest("qqq", ["adv_ce", "ce"]) == ""
