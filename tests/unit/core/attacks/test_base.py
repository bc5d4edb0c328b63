"""The frozen eval-mode model every attack runs on: modes, flags and statistics are restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustdx.core.attacks import attack_ce, attack_supcon, frozen_eval
from robustdx.core.config import AttackConfig
from tests.support.classifiers import batch, snapshot, tiny_model

pytestmark = pytest.mark.unit

EPS = 8 / 255




@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("restarts", [1, 2])
def test_attack_restores_model_state(training: bool, restarts: int) -> None:
    model = tiny_model(0)
    model.train(training)
    for p in model.projector.parameters():  # a mix of frozen and trainable parameters
        p.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = snapshot(model)
    x, y = batch(0)
    attack_ce(model, x, y, AttackConfig(eps=EPS, steps=3, restarts=restarts))
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = snapshot(model)
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed during the attack"


def test_attack_in_train_mode_leaves_batchnorm_stats_and_grads_alone() -> None:
    model = tiny_model(0).train()
    x, y = batch(0)
    # A forward in train mode does move the running statistics (so the check below can fail).
    probe = tiny_model(0).train()
    bn_before = probe.encoder[0][1].running_mean.clone()
    probe(x)
    assert not torch.equal(bn_before, probe.encoder[0][1].running_mean)

    # Existing parameter gradients (mid-step) are neither cleared nor accumulated into.
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    x_adv = attack_ce(model, x, y, AttackConfig(eps=EPS, steps=3, restarts=2))
    views = torch.stack([x, x_adv], 1)
    attack_supcon(model, views, y, AttackConfig(eps=EPS, steps=2), temperature=0.1)
    assert model.training
    for m, (mean, var, n) in zip(bns, stats, strict=True):
        assert torch.equal(m.running_mean, mean)
        assert torch.equal(m.running_var, var)
        assert torch.equal(m.num_batches_tracked, n)
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.5))


def test_attack_uses_eval_mode_inside() -> None:
    """The attack must see eval-mode outputs: dropout off, BatchNorm on running statistics."""
    model = tiny_model(0).train()
    seen: list[bool] = []
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(m.training))
    x, y = batch(0)
    attack_ce(model, x, y, AttackConfig(eps=EPS, steps=2))
    assert seen and not any(seen)
    assert model.training


def test_frozen_eval_restores_per_module_modes() -> None:
    """Each submodule gets its own mode back, not the top-level flag."""
    model = tiny_model(0)
    model.train()
    model.encoder.eval()  # the linear-probe setting: frozen encoder keeps its BN statistics
    modes = {n: m.training for n, m in model.named_modules()}
    with frozen_eval(model):
        assert not any(m.training for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_frozen_eval_restores_on_exception() -> None:
    model = tiny_model(0).train()
    with pytest.raises(RuntimeError, match="boom"), frozen_eval(model):
        raise RuntimeError("boom")
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------------------------
# equality with torchattacks' PGD
# --------------------------------------------------------------------------------------------
