"""Pictures: the overlay PNG, the heatmap PNG bytes and the clean-vs-attacked grid (Fig. 1)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustdx.core.config import AttackConfig
from robustdx.core.explain.ig import integrated_gradients
from robustdx.core.explain.maps import attribution_map
from robustdx.core.explain.plots import GridConfig, heatmap_png, save_attack_grid, save_overlay
from tests.support.explain import calibrated_cnn, images

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("reduce", ["sum", "abs"])
def test_save_overlay_png(tmp_path: Path, reduce: str) -> None:
    model, x = calibrated_cnn(), images(1, 32)
    amap = attribution_map(integrated_gradients(model, x, n_steps=8).attributions, reduce)[0]
    out = save_overlay(x[0], amap, tmp_path / "sub" / "overlay.png", title="test overlay")
    assert out == tmp_path / "sub" / "overlay.png" and out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 50
    with pytest.raises(ValueError, match="does not match image"):
        save_overlay(x[0], amap[:8], tmp_path / "bad.png")


def test_heatmap_png_bytes() -> None:
    amap = torch.randn(12, 20)
    data = heatmap_png(amap)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (20, 12) and im.mode == "RGB"
    with Image.open(io.BytesIO(heatmap_png(amap.abs()))) as im:
        assert im.size == (20, 12)


def test_heatmap_colours_follow_the_sign() -> None:
    """Signed maps use the diverging colormap (0 in its white middle), non-negative ones the sequential one
    (0 black)."""
    amap = torch.zeros(4, 4)
    amap[0, 0], amap[3, 3] = 1.0, -1.0
    with Image.open(io.BytesIO(heatmap_png(amap))) as im:
        zero = im.getpixel((1, 1))
        assert min(zero) > 200  # RdBu_r's centre is near white
        red, blue = im.getpixel((0, 0)), im.getpixel((3, 3))
        assert red[0] > red[2] and blue[2] > blue[0]
    with Image.open(io.BytesIO(heatmap_png(amap.abs()))) as im:
        assert max(im.getpixel((1, 1))) < 10  # inferno's 0 is near black


def test_save_attack_grid_png(tmp_path: Path) -> None:
    models = {"ce": calibrated_cnn(0), "adv_ce": calibrated_cnn(1)}
    x, y = images(2, 16), torch.tensor([0, 1])
    grid = GridConfig(attack=AttackConfig(eps=8 / 255, steps=2), baseline="blur")
    out = save_attack_grid(models, x, y, tmp_path / "grid.png", grid)
    assert out.stat().st_size > 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100  # 2 rows x (2 images x 4 panels)
    assert all(not m.training for m in models.values())
    state = torch.random.get_rng_state()
    again = save_attack_grid(models, x, y, tmp_path / "again.png", grid)
    assert again.read_bytes() == out.read_bytes(), "the attack's random start is seeded: same models, same figure"
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's RNG is not moved"
    with pytest.raises(ValueError, match="models is empty"):
        save_attack_grid({}, x, y, tmp_path / "empty.png", GridConfig(attack=AttackConfig()))
    with pytest.raises(ValueError, match=r"'pred'.*label, predicted"):
        save_attack_grid(models, x, y, tmp_path / "bad.png", GridConfig(attack=AttackConfig(), target="pred"))
    with pytest.raises(ValueError, match="labels shape"):
        save_attack_grid(models, x, y[:1], tmp_path / "bad.png", grid)
