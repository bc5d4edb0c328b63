"""BatchNorm folding keeps the function and removes every BatchNorm; the fast twin is the same function,
with the same input gradients, and leaves the caller's model as it was."""

from __future__ import annotations

import pytest
import torch

from robustdx.core.attacks import channels_like, frozen_eval
from robustdx.core.attacks.folding import fast_twin
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


def _calibrated(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, proj_dim=8, head_hidden=8))
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 32, 32))  # non-trivial running statistics
    return model.eval()


def _logits_and_input_gradient(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inp = channels_like(x, net).requires_grad_(True)
    out = net(inp)
    (grad,) = torch.autograd.grad(out[:, 1].sum() - out[:, 0].sum(), inp)
    return out.detach(), grad.contiguous()


@pytest.mark.parametrize("arch", ["test_cnn", "resnet18"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_twin_is_the_same_function_with_the_same_input_gradients(arch: str, channels_last: bool) -> None:
    model = _calibrated(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with frozen_eval(model):
        twin = fast_twin(model, channels_last=channels_last)
        out, grad = _logits_and_input_gradient(model, x)
        out_twin, grad_twin = _logits_and_input_gradient(twin, x)
    assert twin is not model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in twin.encoder.modules())
    conv = next(m for m in twin.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not conv.weight.requires_grad, "built inside frozen_eval: the twin's weights are frozen too"
    assert torch.allclose(out_twin, out, atol=1e-5, rtol=1e-5)
    assert torch.allclose(grad_twin, grad, atol=1e-5 * float(grad.abs().max()), rtol=1e-5)
    for k, v in model.state_dict().items():  # the caller's model: same values, same (contiguous) layout
        assert torch.equal(v, state[k]) and v.is_contiguous(), k
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())


def test_fast_twin_of_a_model_without_an_encoder_is_a_channels_last_copy() -> None:
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.rand(2, 3, 8, 8)
    twin = fast_twin(model.eval())
    assert twin is not model and twin[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous(), "the original keeps its layout"
    assert torch.allclose(twin(channels_like(x, twin)), model(x), atol=1e-6)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    assert fast_twin(linear) is linear, "nothing to fold and no convolutions: the model itself"
