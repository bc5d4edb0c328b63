"""Attacks are looked up by ``AttackConfig.name`` in one registry."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.attacks import attack_ce, create_attack, list_attacks
from robustdx.core.config import AttackConfig
from tests.support.classifiers import batch, tiny_model

pytestmark = pytest.mark.unit


def test_every_configurable_attack_is_registered() -> None:
    names = AttackConfig.model_fields["name"].annotation.__args__
    assert set(names) <= set(list_attacks())


@pytest.mark.parametrize("name", ["pgd", "fgsm_rs"])
def test_created_attack_is_the_configured_one(name: str) -> None:
    model, (x, y) = tiny_model(), batch()
    cfg = AttackConfig(name=name, eps=8 / 255, steps=1 if name == "fgsm_rs" else 3)
    torch.manual_seed(0)
    got = create_attack(cfg)(model, x, y)
    torch.manual_seed(0)
    assert torch.equal(got, attack_ce(model, x, y, cfg))


def test_unknown_attack_lists_the_registered_ones() -> None:
    from robustdx.core.attacks.base import ATTACKS

    with pytest.raises(KeyError, match=r"unknown attack 'pgdd'\. Did you mean 'pgd'\?"):
        ATTACKS.get("pgdd")
