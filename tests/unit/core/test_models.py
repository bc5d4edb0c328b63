"""Model construction, heads, in-model normalisation, registry and local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch.nn import functional as F

from robustdx.core.config import ModelConfig
from robustdx.core.models import IMAGENET_MEAN, IMAGENET_STD, Normalize, RobustDxNet, build_model, list_models

pytestmark = pytest.mark.unit


def tiny_model(seed: int = 0, **over: object) -> RobustDxNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8, **over))


@pytest.mark.parametrize(
    ("arch", "size", "feature_dim", "num_classes"),
    [("test_cnn", 16, 64, 2), ("test_cnn", 16, 64, 3), ("resnet18", 32, 512, 2)],
)
def test_build_model_shapes(arch: str, size: int, feature_dim: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, proj_dim=8, head_hidden=8, num_classes=num_classes)).eval()
    assert model.arch == arch
    assert model.feature_dim == feature_dim
    b = 2
    x = torch.rand(b, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        feats = model.embed(x)
        z = model.project(x)
    assert logits.shape == (b, num_classes)
    assert feats.shape == (b, feature_dim)
    assert z.shape == (b, 8)
    assert z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(b), atol=1e-5)
    # project is the L2-normalised projector output on the encoder features.
    with torch.no_grad():
        want = F.normalize(model.projector(feats), dim=-1)
    assert torch.allclose(z, want, atol=1e-6)
    assert torch.isfinite(logits).all()


def test_train_mode_forward_and_backward() -> None:
    model = tiny_model().train()
    x = torch.rand(4, 3, 16, 16)
    loss = model(x).sum() + model.project(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_test_cnn_is_tiny() -> None:
    model = tiny_model()
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    assert 1_000 < n_encoder <= 50_000
    # The heads are sized by the config.
    assert model.classifier[0].out_features == 8
    assert model.projector[-1].out_features == 8


def test_normalize_layer_uses_imagenet_constants() -> None:
    model = tiny_model()
    assert isinstance(model.normalize, Normalize)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(model.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    assert IMAGENET_MEAN == pytest.approx((0.485, 0.456, 0.406))
    assert IMAGENET_STD == pytest.approx((0.229, 0.224, 0.225))
    x = torch.rand(3, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), (x - mean) / std, atol=1e-6)
    # Buffers, not parameters: they move with .to() and are saved, but are never trained.
    names = dict(model.named_buffers())
    assert "normalize.mean" in names and "normalize.std" in names
    assert not any(n.startswith("normalize.") for n, _ in model.named_parameters())


def test_normalisation_is_inside_the_model() -> None:
    model = tiny_model().eval()
    x = torch.rand(4, 3, 16, 16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        manual = model.classifier(model.encoder((x - mean) / std))
        out = model(x)
        unnormalised = model.classifier(model.encoder(x))
    assert torch.allclose(out, manual, atol=1e-5)
    assert not torch.allclose(out, unnormalised, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), model.encoder((x - mean) / std), atol=1e-5)


def test_reset_classifier_changes_head_only() -> None:
    model = tiny_model()
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    proj = {k: v.clone() for k, v in model.projector.state_dict().items()}
    head = {k: v.clone() for k, v in model.classifier.named_parameters()}
    torch.manual_seed(123)
    model.reset_classifier()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc[k]), k
    for k, v in model.projector.state_dict().items():
        assert torch.equal(v, proj[k]), k
    new_head = dict(model.classifier.named_parameters())
    assert not torch.equal(new_head["0.weight"], head["0.weight"])
    assert not torch.equal(new_head["4.weight"], head["4.weight"])
    # Shapes are unchanged.
    assert all(new_head[k].shape == head[k].shape for k in head)


def test_reset_classifier_resets_head_batchnorm() -> None:
    model = tiny_model().train()
    model(torch.rand(4, 3, 16, 16))
    bn = model.classifier[1]
    assert bn.num_batches_tracked.item() == 1
    model.reset_classifier()
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


@pytest.mark.parametrize(("typo", "name"), [("resnt18", "resnet18"), ("resnet500", "resnet50"), ("test-cnn", "test_cnn")])
def test_unknown_arch_suggests_nearest(typo: str, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelConfig(arch=typo)
    msg = str(info.value)
    assert "unknown arch" in msg
    assert f"Did you mean {name!r}" in msg


def test_unknown_arch_without_near_match_lists_names() -> None:
    with pytest.raises(ValidationError) as info:
        ModelConfig(arch="zzzzzzzz")
    msg = str(info.value)
    assert "Did you mean" not in msg
    assert "resnet18" in msg and "test_cnn" in msg


def test_list_models() -> None:
    names = list_models()
    assert {"resnet18", "resnet34", "resnet50", "test_cnn"} <= set(names)
    assert names == sorted(names)
    assert list_models("resnet*") == sorted(n for n in names if n.startswith("resnet"))
    assert "test_cnn" not in list_models("resnet*")


def test_build_model_loads_local_encoder_weights(tmp_path: Path) -> None:
    donor = tiny_model(seed=1)
    with torch.no_grad():  # make the donor's BatchNorm statistics distinctive too
        donor.encoder[0][1].running_mean.fill_(0.25)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in donor.encoder.state_dict().items()}, str(path))

    fresh = tiny_model(seed=2)
    assert not torch.equal(fresh.encoder[0][0].weight, donor.encoder[0][0].weight)

    torch.manual_seed(2)
    loaded = build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8, weights=path))
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[k], v), k
    assert torch.equal(loaded.encoder[0][1].running_mean, torch.full((16,), 0.25))
    # Only the encoder comes from the file; the heads are this model's own initialisation.
    assert torch.equal(loaded.classifier[0].weight, fresh.classifier[0].weight)
    assert not torch.equal(loaded.classifier[0].weight, donor.classifier[0].weight)


def test_build_model_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8, weights=tmp_path / "nope.safetensors"))


def test_build_model_rejects_weights_of_another_arch(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2), "layer9.bias": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match="do not fit"):
        build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8, weights=path))
