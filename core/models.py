"""Encoders, heads and the classifier used by every regime.

Why normalisation lives inside the model: attacks and attributions then work on [0, 1] pixel
images, so ε is measured in pixel units and clamping to the valid range is exact (SCIENCE.md,
weakness 1). The encoder is a torchvision ResNet with its final FC removed (the paper's setting);
``test_*`` variants are tiny networks for CPU tests and demos.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustdx.core.registry import Registry

if TYPE_CHECKING:  # the config validates arch names against this module's registry: no import back at run time
    from robustdx.core.config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ENCODERS: Registry[Callable[[], tuple[nn.Module, int]]] = Registry("model")


def register_model(name: str) -> Callable:
    """Register an encoder factory returning ``(module, feature_dim)``."""
    return _ENCODERS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered encoders matching a glob."""
    return _ENCODERS.list(pattern)


def _torchvision_resnet(name: str) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)  # never download: weights come from files
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


@register_model("resnet18")
def resnet18() -> tuple[nn.Module, int]:
    """ResNet-18 encoder (512-d features)."""
    return _torchvision_resnet("resnet18")


@register_model("resnet34")
def resnet34() -> tuple[nn.Module, int]:
    """ResNet-34 encoder (512-d features)."""
    return _torchvision_resnet("resnet34")


@register_model("resnet50")
def resnet50() -> tuple[nn.Module, int]:
    """ResNet-50 encoder (2048-d features), the paper's choice."""
    return _torchvision_resnet("resnet50")


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_model("test_cnn")
def test_cnn() -> tuple[nn.Module, int]:
    """Tiny 3-layer CNN with BatchNorm (~24k parameters) for tests and CPU demos at 32-64 px."""
    net = nn.Sequential(
        _conv_bn(3, 16, 1),
        _conv_bn(16, 32, 2),
        _conv_bn(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return net, 64


class Normalize(nn.Module):
    """Per-channel standardisation as the model's first layer."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def make_classifier_head(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The paper's 1-layer MLP head: Linear -> BatchNorm -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def make_projection_head(in_dim: int, proj_dim: int) -> nn.Sequential:
    """SupCon projection head (Khosla et al. 2020): Linear -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, proj_dim))


class RobustDxNet(nn.Module):
    """Normalise -> encoder -> {classifier head, projection head}.

    Inputs are images in [0, 1], shape ``[B, 3, H, W]``. ``forward`` returns logits,
    ``embed`` the encoder features, ``project`` the L2-normalised SupCon projection.

    Example:
        >>> from robustdx.core.config import ModelConfig
        >>> net = build_model(ModelConfig(arch="test_cnn"))
        >>> net(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 2])
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        encoder, dim = _ENCODERS.get(cfg.arch)()
        self.arch = cfg.arch
        self.feature_dim = dim
        self.normalize = Normalize()
        self.encoder = encoder
        self.projector = make_projection_head(dim, cfg.proj_dim)
        self.classifier = make_classifier_head(dim, cfg.head_hidden, cfg.num_classes, cfg.dropout)

    def embed(self, x: Tensor) -> Tensor:
        return self.encoder(self.normalize(x))

    def project(self, x: Tensor) -> Tensor:
        return F.normalize(self.projector(self.embed(x)).float(), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))

    def reset_classifier(self) -> None:
        """Re-initialise the classifier head (fine-tuning starts from a fresh head)."""
        for m in self.classifier.modules():
            if hasattr(m, "reset_parameters") and m is not self.classifier:
                m.reset_parameters()


def build_model(cfg: ModelConfig) -> RobustDxNet:
    """Build the network for ``cfg``; load local encoder weights when ``cfg.weights`` is set."""
    net = RobustDxNet(cfg)
    if cfg.weights is not None:
        from safetensors.torch import load_file

        path = Path(cfg.weights)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights {str(path)!r} not found (safetensors state dict expected)")
        missing, unexpected = net.encoder.load_state_dict(load_file(str(path)), strict=False)
        if unexpected or len(missing) == len(net.encoder.state_dict()):
            raise ValueError(f"{path}: weights do not fit arch {cfg.arch!r} (unexpected: {unexpected[:5]})")
    return net
