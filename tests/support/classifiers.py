"""Tiny classifiers and data sets whose robust accuracy is known, for evaluation and attack unit tests.

* :func:`colour_task` / :func:`train_colour_cnn`: a learnable task and the tiny CNN trained on it in ~1 s;
* :class:`MeanIntensity` with :func:`margin_images`: a parameter-free model whose robust accuracy at ε is
  known exactly (optionally with masked gradients);
* :func:`as_dataset`: ``(image, label, group)`` items as the evaluation functions expect them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from robustdx.core.config import ModelConfig
from robustdx.core.models import RobustDxNet, build_model

EPS = 8 / 255


def tiny_model(seed: int = 0) -> RobustDxNet:
    """The registered ``test_cnn`` (a few thousand parameters), seeded, in eval mode."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8)).eval()


def colour_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images, class 1 when the red channel is brighter on average than the green one. The
    difference has a std of ~6/255, so budgets of a few /255 flip a good share of the items."""
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()


def train_colour_cnn() -> RobustDxNet:
    """The tiny CNN after 60 Adam steps on :func:`colour_task` (~94 % accuracy, ~1 s), in eval mode."""
    model = tiny_model(0).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        x, y = colour_task(64, 100 + step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


class MeanIntensity(nn.Module):
    """Class 1 iff the mean pixel exceeds ``t``: an L∞ perturbation of ε moves the mean by at most ε,
    so an image whose mean is within ε of ``t`` can be flipped and one further away cannot (the
    robust accuracy is known exactly). ``quantise`` rounds inputs to 8-bit levels first: the same
    function up to 0.5/255, but with zero gradient everywhere (masked gradients)."""

    def __init__(self, t: float = 0.5, scale: float = 50.0, quantise: bool = False) -> None:
        super().__init__()
        self.t, self.scale, self.quantise = t, scale, quantise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantise:
            x = torch.round(x * 255) / 255
        z = (x.mean((1, 2, 3)) - self.t) * self.scale
        return torch.stack([-z, z], 1)


def margin_images(margins: list[float], size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Interior images whose mean is ``0.5 + m·ε`` exactly (labels: the side of 0.5), so no pixel can
    reach 0 or 1 within ε and the margin of :class:`MeanIntensity` is ``|m|·ε``."""
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor(margins)
    noise = (torch.rand(len(margins), 3, size, size, generator=g) - 0.5) * 0.2
    x = 0.5 + m.view(-1, 1, 1, 1) * EPS + noise - noise.mean((1, 2, 3), keepdim=True)
    return x, (m > 0).long()


def as_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    """``(image, label, group 0)`` items."""
    return TensorDataset(x, y, torch.zeros_like(y))


def own_label_dataset(model: nn.Module, n: int = 32, size: int = 16, seed: int = 0) -> TensorDataset:
    """Random images labelled with the model's own clean prediction (clean accuracy 1)."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return as_dataset(x, y)


def batch(seed: int = 0, b: int = 8, interior: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (``interior``: in [0.1, 0.9], so no pixel can reach the range's bounds
    within 8/255) and labels with both classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 16, 16, generator=g)
    if interior:
        x = 0.1 + 0.8 * x
    y = torch.arange(b) % 2
    return x, y


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def mean_intensity_batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose means are spread around 0.5 (interior pixels), their true labels and the means."""
    g = torch.Generator().manual_seed(seed)
    means = 0.5 + (torch.rand(n, generator=g) - 0.5) * 0.12  # within ±0.06 of the boundary
    x = (means.view(-1, 1, 1, 1) + 0.05 * (torch.rand(n, 3, 8, 8, generator=g) - 0.5)).clamp(0.2, 0.8)
    means = x.flatten(1).mean(1)
    return x, (means > 0.5).long(), means
