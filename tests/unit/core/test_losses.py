"""SupCon loss against a slow, loop-based reference of Khosla et al. 2020 (eq. 2, "L_out")."""

from __future__ import annotations

import math

import pytest
import torch

from robustdx.core.losses import cross_entropy, supcon_loss

pytestmark = pytest.mark.unit


def reference_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, list[bool]]:
    """Per-anchor L_out with explicit Python loops, in float64.

    Returns the per-anchor losses in view-major order (0 where the anchor has no positive) and a
    mask telling which anchors have at least one positive.
    """
    if z.ndim == 2:
        z = z.unsqueeze(1)
    b, v, _ = z.shape
    z = z.double()
    feats = [z[i, k] / z[i, k].norm() for k in range(v) for i in range(b)]  # view-major
    ys = [int(labels[i]) for _ in range(v) for i in range(b)]
    n = v * b
    losses, has_pos = [], []
    for i in range(n):
        denom = sum(math.exp(float(feats[i] @ feats[a]) / temperature) for a in range(n) if a != i)
        positives = [p for p in range(n) if p != i and ys[p] == ys[i]]
        if not positives:
            losses.append(0.0)
            has_pos.append(False)
            continue
        total = 0.0
        for p in positives:
            total += math.log(math.exp(float(feats[i] @ feats[p]) / temperature) / denom)
        losses.append(-total / len(positives))
        has_pos.append(True)
    return torch.tensor(losses, dtype=torch.float64), has_pos


def reference_mean(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    per, has_pos = reference_supcon(z, labels, temperature)
    mask = torch.tensor(has_pos)
    return per[mask].mean() if mask.any() else torch.tensor(0.0, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(6, 2, 8), (8, 5)])
def test_supcon_matches_reference(seed: int, temperature: float, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g)
    labels = torch.randint(0, 3, (shape[0],), generator=g)
    labels[:2] = torch.tensor([0, 1])  # at least two classes
    labels[2:4] = torch.tensor([0, 1])  # every class used above has a second member
    got = supcon_loss(z, labels, temperature)
    want = reference_mean(z, labels, temperature).float()
    assert got.dtype == torch.float32
    assert got.ndim == 0
    assert torch.allclose(got, want, atol=1e-5), (got.item(), want.item())


def test_supcon_reference_is_not_trivially_matched() -> None:
    """Guard on the reference itself: shuffling the labels changes the loss (it depends on them)."""
    torch.manual_seed(0)
    z = torch.randn(6, 2, 8)
    a = supcon_loss(z, torch.tensor([0, 0, 0, 1, 1, 1]), 0.1)
    b = supcon_loss(z, torch.tensor([0, 1, 0, 1, 0, 1]), 0.1)
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a, reference_mean(z, torch.tensor([0, 0, 0, 1, 1, 1]), 0.1).float(), atol=1e-5)
    assert torch.allclose(b, reference_mean(z, torch.tensor([0, 1, 0, 1, 0, 1]), 0.1).float(), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 3])
def test_supcon_reduction_none_per_anchor_view_major(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b, v = 5, 2
    z = torch.randn(b, v, 8, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 2])  # class 2 has one image, but two views -> positive exists
    per = supcon_loss(z, labels, 0.2, reduction="none")
    want, has_pos = reference_supcon(z, labels, 0.2)
    assert per.shape == (v * b,)
    assert all(has_pos)
    assert torch.allclose(per, want.float(), atol=1e-5)
    # View-major, not image-major: anchor 1 is image 1 view 0, not image 0 view 1.
    image_major = want.view(v, b).T.reshape(-1).float()
    assert not torch.allclose(per, image_major, atol=1e-4)
    assert torch.allclose(per.mean(), supcon_loss(z, labels, 0.2), atol=1e-6)


def test_supcon_invalid_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        supcon_loss(torch.randn(4, 2, 3), torch.tensor([0, 0, 1, 1]), reduction="sum")


def test_supcon_singleton_class_one_view_is_excluded() -> None:
    torch.manual_seed(0)
    z = torch.randn(5, 6, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 2 has a single sample and a single view
    loss = supcon_loss(z, labels, 0.1)
    assert torch.isfinite(loss)
    per, has_pos = reference_supcon(z.detach(), labels, 0.1)
    assert has_pos == [True, True, True, True, False]
    assert torch.allclose(loss, per[:4].mean().float(), atol=1e-5)
    # Including the singleton (with loss 0) in the mean would give a different, wrong value.
    assert not torch.allclose(loss, per.mean().float(), atol=1e-4)
    per_none = supcon_loss(z, labels, 0.1, reduction="none")
    assert per_none[4].item() == 0.0
    assert torch.allclose(per_none[:4], per[:4].float(), atol=1e-5)
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


def test_supcon_no_positive_anywhere_is_zero_with_gradient() -> None:
    z = torch.randn(4, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    loss = supcon_loss(z, labels, 0.1)
    assert loss.ndim == 0
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert z.grad is not None
    assert torch.isfinite(z.grad).all()
    assert (z.grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_supcon_low_precision_input_computed_in_fp32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    z32 = torch.randn(6, 2, 16)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    z_low = z32.to(dtype).requires_grad_(True)
    loss_low = supcon_loss(z_low, labels, 0.1)
    assert loss_low.dtype == torch.float32
    # Same value as fp32 on the same (rounded) numbers: the loss itself runs in fp32.
    loss_ref = supcon_loss(z_low.detach().float(), labels, 0.1)
    assert torch.allclose(loss_low, loss_ref, atol=1e-6)
    # And close to the loss of the unrounded fp32 embeddings.
    assert torch.allclose(loss_low, supcon_loss(z32, labels, 0.1), atol=5e-2)
    loss_low.backward()
    assert z_low.grad is not None and z_low.grad.dtype == dtype
    assert torch.isfinite(z_low.grad.float()).all()
    assert z_low.grad.float().abs().sum() > 0


@pytest.mark.parametrize("shape", [(6, 2, 8), (8, 8)])
def test_supcon_large_embeddings_tiny_temperature_stable(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    z = (torch.randn(*shape) * 1e4).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1][: shape[0]])
    loss = supcon_loss(z, labels, 0.01)
    assert torch.isfinite(loss)
    assert loss.item() > 0
    assert torch.allclose(loss, reference_mean(z.detach(), labels, 0.01).float(), rtol=1e-4, atol=1e-3)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_supcon_scale_invariant() -> None:
    """Embeddings are L2-normalised: scaling them does not change the loss."""
    torch.manual_seed(1)
    z = torch.randn(4, 2, 8)
    y = torch.tensor([0, 1, 1, 0])
    assert torch.allclose(supcon_loss(z, y), supcon_loss(z * 37.0, y), atol=1e-5)


@pytest.mark.parametrize(
    ("z_shape", "labels"),
    [
        ((4, 2, 8), torch.tensor([0, 1, 0])),  # too few labels
        ((4, 2, 8), torch.tensor([[0, 1, 0, 1]])),  # 2-d labels
        ((6, 8), torch.tensor([0, 1, 0, 1, 0, 1, 0])),  # one-view: too many
        ((4, 2, 8), torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])),  # labels per view instead of per image
    ],
)
def test_supcon_wrong_labels_shape_raises(z_shape: tuple[int, ...], labels: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="labels must have shape"):
        supcon_loss(torch.randn(*z_shape), labels)


def test_cross_entropy_fp32_and_reduction() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 0])
    per = cross_entropy(logits.half(), y, reduction="none")
    assert per.dtype == torch.float32 and per.shape == (4,)
    manual = -torch.log_softmax(logits.half().float(), dim=1)[torch.arange(4), y]
    assert torch.allclose(per, manual, atol=1e-6)
    assert torch.allclose(cross_entropy(logits, y), per.mean(), atol=1e-3)
