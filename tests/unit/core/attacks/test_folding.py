"""BatchNorm folding keeps the function and removes every BatchNorm."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.attacks import frozen_eval
from robustdx.core.config import ModelConfig
from robustdx.core.models import build_model

pytestmark = pytest.mark.unit



@pytest.mark.parametrize("arch", ["test_cnn", "resnet18", "resnet50"])
def test_fold_batchnorm_keeps_the_function_and_removes_every_batchnorm(arch: str) -> None:
    from robustdx.core.attacks import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, proj_dim=8, head_hidden=8))
    model.train()
    model(torch.rand(4, 3, 32, 32))  # non-trivial running statistics
    x = torch.rand(2, 3, 32, 32)
    with frozen_eval(model):
        twin = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in twin.encoder.modules())
        assert torch.allclose(twin(x), model(x), atol=1e-4, rtol=1e-4)
        assert torch.allclose(twin.project(x), model.project(x), atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules()), "the original is untouched"
