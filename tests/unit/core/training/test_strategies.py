"""Training regimes as strategies (core/training/strategies.py): the passes of every regime, what each
trains, finite losses, validation keys, and the registry's lookup errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import robustdx.core.training.strategies as strategies
from robustdx.core.config import AttackConfig, FinetuneMode, Regime, StageConfig
from robustdx.core.training.strategies import (
    CEStrategy,
    FinetuneStrategy,
    StepContext,
    SupConStrategy,
    balanced_class_weights,
    create_strategy,
    list_regimes,
)
from tests.support.classifiers import tiny_model
from tests.support.splits import tensor_splits

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("regime", "stage", "passes"),
    [
        (Regime.CE, {}, [False]),
        (Regime.ADV_CE, {}, [False, True]),  # the paper's clean pass, then the adversarial one
        (Regime.ADV_CE, {"schedule": "adversarial"}, [True]),
        (Regime.SUPCON, {}, [False]),
        (Regime.ADV_SUPCON, {}, [False, True]),
        (Regime.ADV_SUPCON, {"schedule": "adversarial"}, [True]),
        (Regime.FINETUNE, {"finetune_mode": "full"}, [False]),
        (Regime.FINETUNE, {"finetune_mode": "linear"}, [False]),
        (Regime.FINETUNE, {"finetune_mode": "adversarial"}, [False, True]),
    ],
)
def test_passes_of_every_regime(regime: Regime, stage: dict, passes: list[bool]) -> None:
    assert create_strategy(regime, StageConfig(**stage)).passes() == passes


def test_regime_strategies_and_what_they_monitor() -> None:
    stage = StageConfig()
    kinds = {r: type(create_strategy(r, stage)) for r in Regime}
    assert kinds == {
        Regime.CE: CEStrategy,
        Regime.ADV_CE: CEStrategy,
        Regime.SUPCON: SupConStrategy,
        Regime.ADV_SUPCON: SupConStrategy,
        Regime.FINETUNE: FinetuneStrategy,
    }
    assert create_strategy("supcon", stage).two_views and create_strategy("supcon", stage).monitor == "val_centroid_acc"
    assert not create_strategy("ce", stage).two_views and create_strategy("ce", stage).monitor == "val_acc"


def test_registry_lists_the_regimes_and_names_them_on_a_typo() -> None:
    assert list_regimes() == sorted(str(r) for r in Regime)
    assert all(type(name) is str for name in list_regimes())
    with pytest.raises(KeyError, match=r"unknown regime 'adv_cee'\. Did you mean 'adv_ce'\?.*Valid: adv_ce, adv_supcon, ce"):
        create_strategy("adv_cee", StageConfig())


def test_finetune_linear_freezes_the_encoder_and_resets_the_head() -> None:
    model = tiny_model(0)
    head = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    strategy = create_strategy(Regime.FINETUNE, StageConfig(finetune_mode=FinetuneMode.LINEAR))
    params = strategy.prepare(model)
    assert {id(p) for p in params} == {id(p) for p in model.classifier.parameters()}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert any(not torch.equal(head[k], v) for k, v in model.classifier.state_dict().items()), "head not re-initialised"
    strategy.train_mode(model)
    assert model.training and model.classifier.training
    assert not any(m.training for m in model.encoder.modules()), "a frozen encoder keeps its BatchNorm statistics"


def test_finetune_full_trains_everything_again() -> None:
    model = tiny_model(0)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    params = create_strategy(Regime.FINETUNE, StageConfig()).prepare(model)
    assert len(params) == len(list(model.parameters())) and all(p.requires_grad for p in params)
    create_strategy(Regime.FINETUNE, StageConfig()).train_mode(model)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("regime", list(Regime))
@pytest.mark.parametrize("adversarial", [False, True])
def test_every_regime_gives_a_finite_scalar_loss_with_gradients(regime: Regime, adversarial: bool) -> None:
    stage = StageConfig()
    strategy = create_strategy(regime, stage)
    model = tiny_model(0)
    strategy.prepare(model)
    strategy.train_mode(model)
    g = torch.Generator().manual_seed(0)
    shape = (6, 2, 3, 16, 16) if strategy.two_views else (6, 3, 16, 16)
    x, y = torch.rand(shape, generator=g), torch.arange(6) % 2
    loss = strategy.loss(model, x, y, adversarial, StepContext(stage=stage, attack=AttackConfig(eps=4 / 255, steps=2)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_validation_keys() -> None:
    model, cpu = tiny_model(0), torch.device("cpu")
    ce = create_strategy(Regime.CE, StageConfig()).validate(model, tensor_splits(), cpu, batch_size=8)
    assert {"val_acc", "val_bal_acc", "val_auc", "val_ece", "val_loss", "val_group_acc"} <= set(ce)
    assert 0 <= ce["val_acc"] <= 1
    supcon = create_strategy(Regime.SUPCON, StageConfig()).validate(model, tensor_splits(two_views=True), cpu, batch_size=8)
    assert set(supcon) == {"val_centroid_acc"} and 0 <= supcon["val_centroid_acc"] <= 1


# ------------------------------------------------------------------------------------ class weights

CLASSIFIER_REGIMES = [Regime.CE, Regime.ADV_CE, Regime.FINETUNE]
Y = torch.tensor([0, 0, 0, 1, 0, 1])  # the tiny batch
TRAIN_LABELS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])  # 6:2 -> weights 8/(2·6), 8/(2·2)


def _train_set(labels: torch.Tensor = TRAIN_LABELS) -> TensorDataset:
    return TensorDataset(torch.zeros(len(labels), 3, 16, 16), labels)


def test_balanced_weights_are_inverse_class_frequency() -> None:
    assert balanced_class_weights(np.array([0] * 6 + [1] * 2), 2).tolist() == pytest.approx([8 / 12, 8 / 4])
    assert balanced_class_weights(np.array([0, 1, 2, 2]), 3).tolist() == pytest.approx([4 / 3, 4 / 3, 4 / 6])
    assert balanced_class_weights(np.array([1, 0] * 5), 2).tolist() == [1.0, 1.0]


def test_balanced_weights_refuse_a_missing_class_naming_the_counts() -> None:
    with pytest.raises(ValueError, match=r"every one of 2 classes.*counts \[4, 0\].*class_weights='none'"):
        balanced_class_weights(np.zeros(4, dtype=int), 2)
    with pytest.raises(ValueError, match=r"counts \[1, 0, 1\]"):
        balanced_class_weights(np.array([0, 2]), 2)


@pytest.mark.parametrize("regime", CLASSIFIER_REGIMES)
def test_classifier_regimes_weight_by_the_training_labels_only_when_balanced(regime: Regime) -> None:
    balanced = create_strategy(regime, StageConfig(class_weights="balanced")).class_weights(_train_set(), 2)
    assert balanced is not None and balanced.tolist() == pytest.approx([8 / 12, 8 / 4])
    assert create_strategy(regime, StageConfig()).class_weights(_train_set(), 2) is None


@pytest.mark.parametrize("regime", [Regime.SUPCON, Regime.ADV_SUPCON])
def test_supcon_ignores_class_weights(regime: Regime) -> None:
    assert create_strategy(regime, StageConfig(class_weights="balanced")).class_weights(_train_set(), 2) is None


def _clean_loss(regime: Regime, class_weights: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The strategy's clean loss on the tiny batch, the model's logits on it, and the weights used."""
    stage = StageConfig(class_weights=class_weights)
    strategy = create_strategy(regime, stage)
    model = tiny_model(0)
    strategy.prepare(model)
    model.eval()  # no dropout: the logits below are the ones the loss saw
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    weights = strategy.class_weights(_train_set(), 2)
    loss = strategy.loss(model, x, Y, False, StepContext(stage, AttackConfig(), weights))
    return loss, model(x), weights


@pytest.mark.parametrize("regime", CLASSIFIER_REGIMES)
def test_balanced_loss_is_torchs_weighted_cross_entropy_with_hand_computed_weights(regime: Regime) -> None:
    loss, logits, _ = _clean_loss(regime, "balanced")
    hand = torch.tensor([8 / 12, 8 / 4])
    expected = F.cross_entropy(logits, Y, weight=hand)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(logits, Y)), "the weights must change this batch's loss"


@pytest.mark.parametrize("regime", CLASSIFIER_REGIMES)
def test_unweighted_loss_is_plain_cross_entropy(regime: Regime) -> None:
    loss, logits, weights = _clean_loss(regime, "none")
    assert weights is None
    torch.testing.assert_close(loss, F.cross_entropy(logits, Y))


def test_the_adversarial_pass_weights_the_training_loss_but_not_the_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    """attack_ce gets the plain batch (its loss is the unweighted one); the loss on its output is weighted."""
    seen: dict = {}
    shift = torch.full((6, 3, 16, 16), 0.01)

    def fake_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig) -> torch.Tensor:
        seen.update(x=x, y=y, attack=attack)
        return (x + shift).clamp(0, 1)

    monkeypatch.setattr(strategies, "attack_ce", fake_attack)
    stage = StageConfig(class_weights="balanced")
    strategy = create_strategy(Regime.ADV_CE, stage)
    model = tiny_model(0)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    weights = strategy.class_weights(_train_set(), 2)
    attack = AttackConfig(eps=4 / 255, steps=2)
    loss = strategy.loss(model, x, Y, True, StepContext(stage, attack, weights))
    assert seen["x"] is x and seen["y"] is Y and seen["attack"] is attack
    torch.testing.assert_close(loss, F.cross_entropy(model((x + shift).clamp(0, 1)), Y, weight=torch.tensor([8 / 12, 8 / 4])))
