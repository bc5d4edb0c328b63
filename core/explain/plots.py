"""Pictures of attribution maps: the overlay PNG, the service's heatmap PNG bytes and the paper's Fig. 1
grid (clean vs PGD-attacked input, IG of each, one row per training regime).

Why a module of its own: matplotlib is heavy and only reports and the service need it, so it is
imported here and nowhere else in :mod:`robustdx.core.explain`. Figures are drawn on matplotlib's Agg
canvas (:class:`matplotlib.figure.Figure`, no pyplot, no backend switch), so nothing global is touched
and figures can be drawn from several threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from robustdx.core.attacks import attack_ce, frozen_eval
from robustdx.core.config import AttackConfig
from robustdx.core.explain.baselines import Baseline
from robustdx.core.explain.checks import check_images
from robustdx.core.explain.ig import SCORING_STEPS, integrated_gradients
from robustdx.core.explain.maps import attribution_map
from robustdx.core.registry import parse_option

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable

_OVERLAY_ALPHA = 0.6
"""Opacity of a map drawn over its image: the tissue stays visible under the colours."""


class GridTarget(StrEnum):
    """Which class the Fig. 1 grid explains: the true label (comparable maps) or each prediction."""

    LABEL = "label"
    PREDICTED = "predicted"


@dataclass(frozen=True)
class GridConfig:
    """What :func:`save_attack_grid` shows.

    Attributes:
        attack: the PGD attack of the "attacked" column.
        baseline: the IG baseline.
        target: explain the true class (``label``, so the clean and attacked maps are comparable) or
            each prediction (``predicted``).
        tol: completeness error (a fraction of ``f(x) − f(b)``) above which a map's title says so.
        n_steps: Gauss–Legendre points of IG (the scored maps' rule by default).
        class_names: names of the classes for the titles (None: the class indices).
        seed: seed of the attack's random start, so the same models draw the same figure (a committed report's
            figure changes only when its models do); the caller's RNG is left where it was.
    """

    attack: AttackConfig
    baseline: Baseline | str = Baseline.BLACK
    target: GridTarget | str = GridTarget.LABEL
    tol: float = 0.01
    n_steps: int = SCORING_STEPS
    class_names: Sequence[str] | None = None
    seed: int = 0


class ColourScale(NamedTuple):
    """Colour limit of one or more maps drawn together, and whether they are signed."""

    vmax: float
    signed: bool


def _scale(amaps: list[Tensor], quantile: float = 0.99) -> ColourScale:
    """Colour limit (a high quantile of |map|, so a few extreme pixels do not wash the map out) and
    whether the maps are signed."""
    flat = torch.cat([m.detach().float().flatten().cpu() for m in amaps])
    signed = bool((flat < 0).any())
    vmax = float(torch.quantile(flat.abs(), quantile)) if flat.numel() else 0.0
    return ColourScale((vmax if vmax > 0 else float(flat.abs().max().clamp_min(1e-12))), signed)


def _colormap(signed: bool) -> str:
    return "RdBu_r" if signed else "inferno"


def _as_rgb(image: Tensor) -> Any:
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected one image [3, H, W] (or [1, H, W]), got shape {tuple(image.shape)}")
    img = image.detach().float().cpu().clamp(0, 1)
    return img.expand(3, -1, -1).permute(1, 2, 0).numpy()


def _draw_overlay(ax: Axes, image: Tensor, amap: Tensor, scale: ColourScale) -> ScalarMappable:
    """The image in grey-ish background with the map on top; returns the mappable for a colour bar."""
    ax.imshow(_as_rgb(image))
    vmin = -scale.vmax if scale.signed else 0.0
    m = ax.imshow(
        amap.detach().float().cpu().numpy(), cmap=_colormap(scale.signed), vmin=vmin, vmax=scale.vmax, alpha=_OVERLAY_ALPHA
    )
    ax.set_axis_off()
    return m


def agg_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def save_overlay(image: Tensor, amap: Tensor, path: str | Path, title: str | None = None) -> Path:
    """PNG of the image beside the same image with the attribution map overlaid and a colour bar.

    Signed maps use a diverging colormap centred at 0 (red = evidence for the target, blue =
    against); non-negative maps a sequential one. Colour limits are the 99th percentile of |map|.
    """
    if amap.ndim != 2 or tuple(amap.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"map shape {tuple(amap.shape)} does not match image {tuple(image.shape)}")
    fig = agg_figure(6.4, 3.2)
    ax_img, ax_map = fig.subplots(1, 2)
    ax_img.imshow(_as_rgb(image))
    ax_img.set_title("input", fontsize=9)
    ax_img.set_axis_off()
    mappable = _draw_overlay(ax_map, image, amap, _scale([amap]))
    ax_map.set_title("integrated gradients", fontsize=9)
    fig.colorbar(mappable, ax=ax_map, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def heatmap_png(amap: Tensor, signed: bool | None = None) -> bytes:
    """A colour-mapped PNG of the map alone (same H×W), e.g. for the service to return as base64.

    Only PIL and a matplotlib colormap are used (no figure, no pyplot); ``signed`` defaults to
    whether the map has negative values, choosing the diverging or the sequential colormap.
    """
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    if amap.ndim != 2:
        raise ValueError(f"expected one map [H, W], got shape {tuple(amap.shape)}")
    vmax, has_neg = _scale([amap])
    signed = has_neg if signed is None else signed
    a = amap.detach().float().cpu()
    unit = (a / vmax + 1) / 2 if signed else a / vmax
    rgba = colormaps[_colormap(signed)](unit.clamp(0, 1).numpy(), bytes=True)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the Fig. 1 grid
# ---------------------------------------------------------------------------------------------
def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    with frozen_eval(model):
        probs = torch.softmax(model(x).float(), 1)
    conf, pred = probs.max(1)
    return pred, conf


@dataclass
class _GridCell:
    """One input of one model in the grid: the image, the prediction, the IG map and its error."""

    kind: str
    images: Tensor
    pred: Tensor
    conf: Tensor
    target: Tensor
    maps: Tensor
    rel_error: Tensor


def _grid_cells(model: nn.Module, x: Tensor, y: Tensor, config: GridConfig, mode: GridTarget) -> list[_GridCell]:
    """Clean and PGD-attacked inputs of one model with their predictions and IG maps."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(config.seed)
        attacked = attack_ce(model, x, y, config.attack)
    cells = []
    for kind, img in (("clean", x), ("PGD", attacked)):
        pred, conf = _predict(model, img)
        tgt = y if mode == GridTarget.LABEL else pred
        res = integrated_gradients(model, img, target=tgt, baseline=config.baseline, n_steps=config.n_steps)
        cells.append(_GridCell(kind, img, pred, conf, tgt, attribution_map(res.attributions), res.rel_error))
    return cells


def _class_name(c: Tensor, class_names: Sequence[str] | None) -> str:
    return class_names[int(c)] if class_names else str(int(c))


def _draw_row(fig: Any, axes: Any, cells: list[_GridCell], labels: Tensor, config: GridConfig) -> None:
    """One model's row: per image, the clean and the attacked input, each beside its IG overlay, both
    overlays on one colour scale."""
    names = config.class_names
    for i in range(labels.shape[0]):
        scale = _scale([c.maps[i] for c in cells])
        for j, c in enumerate(cells):
            ax_img, ax_map = axes[4 * i + 2 * j], axes[4 * i + 2 * j + 1]
            ax_img.imshow(_as_rgb(c.images[i]))
            ax_img.set_axis_off()
            ax_img.set_title(
                f"{c.kind}: y={_class_name(labels[i], names)}\npred={_class_name(c.pred[i], names)} p={float(c.conf[i]):.2f}",
                fontsize=7,
            )
            mappable = _draw_overlay(ax_map, c.images[i], c.maps[i], scale)
            err = float(c.rel_error[i])
            flag = "" if err <= config.tol else " INCOMPLETE"
            ax_map.set_title(f"IG({_class_name(c.target[i], names)}) err {err:.2%}{flag}", fontsize=7)
            fig.colorbar(mappable, ax=ax_map, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)


def save_attack_grid(models: dict[str, nn.Module], images: Tensor, labels: Tensor, path: str | Path, config: GridConfig) -> Path:
    """The paper's Fig. 1: IG on clean and PGD-attacked inputs, one row per model (regime).

    For each image a row shows: the clean image (true and predicted class, probability), its IG
    overlay, the attacked image (:func:`robustdx.core.attacks.pgd.attack_ce` with ``config.attack``)
    and its IG overlay. Both maps of an image share one colour scale so the change under attack is
    visible; by default both explain the *true* class (``target="predicted"`` explains each
    prediction). IG is :func:`~robustdx.core.explain.ig.integrated_gradients` with ``config.n_steps``
    Gauss–Legendre points; a map whose completeness error is above ``config.tol`` says so in its title.
    """
    if not models:
        raise ValueError("models is empty; pass {'regime name': model, ...}")
    images = check_images(images)
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
    mode = parse_option(GridTarget, config.target, "grid target")
    parse_option(Baseline, config.baseline, "baseline")
    n = images.shape[0]
    fig = agg_figure(4 * n * 2.3, len(models) * 2.6)
    axes = fig.subplots(len(models), 4 * n, squeeze=False)
    for r, (regime, model) in enumerate(models.items()):
        dev = _device_of(model)
        cells = _grid_cells(model, images.to(dev), labels.to(dev), config, mode)
        _draw_row(fig, axes[r], cells, labels, config)
        axes[r, 0].text(-0.15, 0.5, regime, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    attack = config.attack
    fig.suptitle(f"Integrated gradients on clean vs PGD inputs (eps={attack.eps:.4f}, {attack.steps} steps)", fontsize=10)
    return _save(fig, path)
