"""Scores of attribution maps: localisation, faithfulness, robustness and the randomisation sanity check.

Why: the paper's interpretability claim rests on a few hand-picked Integrated-Gradients pictures
(SCIENCE.md, weakness 7). Here attributions are scored, per image, so regimes can be compared with
confidence intervals:

* localisation against ground truth: the pointing game (Zhang et al. 2018) and the fraction of
  positive attribution inside the BUSI lesion masks or the Camelyon/PCam centre 32×32 label region;
* faithfulness: deletion / insertion AUC (Petsiuk et al. 2018, RISE) and infidelity (Yeh et al. 2019);
* robustness of the explanation: max-sensitivity (Yeh et al. 2019);
* the model-randomisation sanity check (Adebayo et al. 2018): a map that survives randomising the
  weights explains the image, not the model.

Maps are ``amap: [B, H, W]`` tensors produced elsewhere (e.g. channel-summed IG, see
:func:`robustdx.core.explain.maps.attribution_map`). Functions that need attributions recomputed take ``explain_fn(model, inputs,
target) -> attributions`` (``[B, C, H, W]`` or ``[B, H, W]``): the model is an argument because
the randomisation check must explain a different model. Models are run in eval mode with parameter
gradients off and their state restored (:func:`robustdx.core.attacks.base.frozen_eval`). The images
deletion / insertion paste in are the shared baselines of :mod:`robustdx.core.explain.baselines`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max
from scipy.stats import spearmanr
from torch import Tensor, nn

from robustdx.core.attacks import frozen_eval
from robustdx.core.explain.baselines import RISE_BLUR, Baseline, make_baseline
from robustdx.core.explain.maps import Reduce, attribution_map

ExplainFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``explain_fn(model, inputs [B, C, H, W], target [B]) -> attributions [B, C, H, W] or [B, H, W]``."""

Target = int | Tensor


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------
def _check_map(amap: Tensor) -> Tensor:
    if amap.ndim != 3:
        raise ValueError(f"amap must be [B, H, W] (reduce channels with attribution_map), got shape {tuple(amap.shape)}")
    return amap.detach().float()


def _masks(mask: Tensor, amap: Tensor) -> Tensor:
    """``mask`` (``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``; bool or values in [0, 1]) as bool ``[B, H, W]``."""
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask.expand(amap.shape[0], *mask.shape)
    if mask.shape != amap.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit amap of shape {tuple(amap.shape)}")
    return (mask > 0.5 if mask.dtype != torch.bool else mask).to(amap.device)


def _targets(target: Target, b: int, device: torch.device) -> Tensor:
    """``target`` (an int or ``[B]``) as a ``[B]`` long tensor on ``device``."""
    t = torch.as_tensor(target, device=device).long()
    if t.ndim == 0:
        return t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"target must be an int or have shape ({b},), got shape {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------------------------
# localisation
# --------------------------------------------------------------------------------------------
def pointing_game(amap: Tensor, mask: Tensor, tolerance: int = 0) -> Tensor:
    """Pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): a hit
    when the map's maximum lies inside the mask.

    Ties count against the map: every pixel attaining the maximum must be inside the mask, so a
    constant (uninformative) map never scores. ``tolerance`` dilates the mask by that many pixels
    (Zhang et al. use 15 px at 224 px). An empty mask (a BUSI "normal" image) is a miss: leave such
    images out of the score.

    Returns:
        ``[B]`` bool.
    """
    amap = _check_map(amap)
    inside = _masks(mask, amap)
    if tolerance > 0:
        k = 2 * tolerance + 1
        inside = torch.nn.functional.max_pool2d(inside.float().unsqueeze(1), k, stride=1, padding=tolerance)[:, 0] > 0
    at_max = amap == amap.flatten(1).amax(1).view(-1, 1, 1)
    return ~(at_max & ~inside).flatten(1).any(1)


def mass_in_region(amap: Tensor, mask: Tensor, positive_only: bool = True) -> Tensor:
    """Fraction of the attribution mass that falls inside the mask (the "energy-based pointing game",
    Wang et al. 2020, Score-CAM).

    With ``positive_only`` the mass is the positive part of the map (evidence *for* the target);
    otherwise it is ``|amap|``. A map spread uniformly scores the mask's area fraction; a perfectly
    localised one scores 1. For BUSI pass the union of an image's lesion masks.

    Returns:
        ``[B]`` floats in [0, 1]; NaN where the map has no mass.
    """
    amap = _check_map(amap)
    inside = _masks(mask, amap)
    mass = amap.clamp_min(0) if positive_only else amap.abs()
    total = mass.flatten(1).sum(1)
    within = (mass * inside).flatten(1).sum(1)
    return torch.where(total > 0, within / total.clamp_min(torch.finfo(total.dtype).tiny), torch.nan)


def centre_mask(h: int, w: int, frac: float = 32 / 96) -> Tensor:
    """The centre label region of PCam / WILDS Camelyon17 patches as a ``[H, W]`` bool mask.

    Why: a patch is labelled tumour when its centre 32×32 px of the 96×96 px patch contains tumour
    (Veeling et al. 2018; Bandi et al. 2019), so the evidence should be there. ``frac`` is the side
    of the region relative to the image, so resized patches keep the same region.
    """
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac!r}")
    mh, mw = max(1, round(h * frac)), max(1, round(w * frac))
    top, left = (h - mh) // 2, (w - mw) // 2
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + mh, left : left + mw] = True
    return mask


# --------------------------------------------------------------------------------------------
# faithfulness: deletion / insertion
# --------------------------------------------------------------------------------------------
def _baseline(x: Tensor, baseline: Baseline | str | Tensor) -> Tensor:
    """The image the deleted pixels take (and insertion starts from): a :class:`Baseline` of ``x`` —
    ``black``, ``blur``, ``noise`` or ``mean`` (per-image channel means) — or a tensor broadcastable
    to ``x``. ``blur`` is RISE's insertion blur (:data:`~robustdx.core.explain.baselines.RISE_BLUR`,
    kernel 11, σ 5), milder than IG's default blur baseline."""
    if isinstance(baseline, Tensor):
        return baseline.to(x).expand_as(x)
    return make_baseline(x, baseline, blur=RISE_BLUR)


def deletion_insertion_auc(
    model: nn.Module, x: Tensor, amap: Tensor, target: Target, *, steps: int = 16, baseline: Baseline | str | Tensor = "black"
) -> dict[str, Tensor]:
    """Deletion and insertion scores (Petsiuk et al. 2018, "RISE", Sec. 4.1), batched.

    Pixels are ranked by ``amap`` (all channels of a pixel together). Deletion replaces the top
    ``k/steps`` fraction of pixels with the baseline, insertion pastes them into the baseline,
    ``k = 0..steps``; the score is the area under the target-class probability as a function of the
    fraction changed (trapezoid rule, in [0, 1]). A faithful map gives a low deletion and a high
    insertion AUC.

    Returns:
        ``deletion`` and ``insertion`` ``[B]``; ``deletion_curve``, ``insertion_curve`` ``[B, steps+1]``;
        ``fractions`` ``[steps+1]``.
    """
    amap = _check_map(amap)
    if x.ndim != 4 or x.shape[0] != amap.shape[0] or x.shape[2:] != amap.shape[1:]:
        raise ValueError(f"x {tuple(x.shape)} must be [B, C, H, W] with the amap's B, H, W {tuple(amap.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    x = x.detach()
    b, _, h, w = x.shape
    base = _baseline(x, baseline)
    t = _targets(target, b, x.device)
    order = torch.argsort(amap.flatten(1).to(x.device), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1)).view(b, 1, h, w)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    dele, ins = [], []
    with frozen_eval(model), torch.no_grad():
        for n_k in counts:
            top = rank < n_k
            batch = torch.cat([torch.where(top, base, x), torch.where(top, x, base)])
            p = torch.softmax(model(batch).float(), 1).gather(1, torch.cat([t, t]).view(-1, 1)).squeeze(1)
            dele.append(p[:b])
            ins.append(p[b:])
    fractions = torch.tensor(counts, dtype=torch.float32, device=x.device) / (h * w)
    dc, ic = torch.stack(dele, 1), torch.stack(ins, 1)
    return {
        "deletion": torch.trapezoid(dc, fractions, dim=1),
        "insertion": torch.trapezoid(ic, fractions, dim=1),
        "deletion_curve": dc,
        "insertion_curve": ic,
        "fractions": fractions,
    }


# --------------------------------------------------------------------------------------------
# faithfulness and robustness with captum.metrics
# --------------------------------------------------------------------------------------------
def _captum_explainer(model: nn.Module, explain_fn: ExplainFn) -> Callable[..., Tensor | tuple[Tensor, ...]]:
    """Adapt ``explain_fn`` to captum's calling convention: inputs as a tensor or a 1-tuple (the
    output must then be a 1-tuple too, as captum iterates over it), ``target=`` keyword, called under
    ``no_grad``; attributions are returned input-shaped and detached."""

    def explain(inputs: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor | tuple[Tensor, ...]:
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():
            attr = explain_fn(model, x.detach().requires_grad_(True), target).detach()
        attr = attr.unsqueeze(1).expand_as(x) if attr.ndim == 3 else attr
        return (attr,) if isinstance(inputs, tuple) else attr

    return explain


def _gaussian_perturbation(noise_std: float, multiply_by_inputs: bool) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """captum ``perturb_func`` returning ``(I, x - I')`` for Gaussian noise (Yeh et al. 2019, Sec. 3).

    For gradient-like attributions ``I' = I = noise``. For attributions already multiplied by the input
    (gradient×input, IG) the noise is multiplicative, ``I' = x·noise``, and the perturbation handed to
    captum is ``noise`` itself (captum's ``(x - x̃)/x`` convention without dividing by pixels near 0):
    for a linear model both give exactly zero infidelity for the exact attribution.
    """

    def perturb(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        noise = torch.randn_like(x) * noise_std
        return noise, x - (x * noise if multiply_by_inputs else noise)

    return perturb


@dataclass(frozen=True)
class PerturbationConfig:
    """The perturbations of :func:`infidelity_and_sensitivity`.

    Attributes:
        n_perturb: perturbations per image (for each of the two scores).
        noise_std: std of the Gaussian perturbations of infidelity (see :func:`_gaussian_perturbation`).
        perturb_radius: L∞ radius (pixel units) of the uniform input noise of max-sensitivity.
        multiply_by_inputs: True for attributions of the gradient×input family (IG, DeepLIFT,
            gradient×input), False for gradient-like ones (saliency without ``abs``, SmoothGrad).
        normalize: captum's scale-invariant infidelity (the map rescaled by its best-fitting constant).
        seed: seed of both perturbation draws; the caller's RNG state is restored.
        max_batch: captum's ``max_examples_per_batch`` (bounds memory: ``B·n_perturb`` images otherwise).
    """

    n_perturb: int = 10
    noise_std: float = 0.03
    perturb_radius: float = 0.02
    multiply_by_inputs: bool = True
    normalize: bool = False
    seed: int = 0
    max_batch: int | None = None


def infidelity_and_sensitivity(
    model: nn.Module, x: Tensor, explain_fn: ExplainFn, target: Target, config: PerturbationConfig | None = None
) -> dict[str, Tensor]:
    """Infidelity and max-sensitivity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of
    explanations"), via ``captum.metrics.infidelity`` and ``captum.metrics.sensitivity_max``.

    Infidelity is ``E_I[(Iᵀφ(x) − (f_t(x) − f_t(x − I)))²]`` with Gaussian perturbations of std
    ``noise_std`` (see :func:`_gaussian_perturbation`) and ``f_t`` the target logit; 0 means the map
    predicts the model's response to perturbations. Max-sensitivity is the largest relative change of
    the map (Frobenius norm) under uniform input noise of radius ``perturb_radius`` (L∞, pixel units).

    Args:
        explain_fn: ``explain_fn(model, inputs, target)``, see :data:`ExplainFn`.
        config: the perturbations; None: the defaults of :class:`PerturbationConfig`.

    Returns:
        ``infidelity`` and ``sensitivity_max``, each ``[B]``.
    """
    cfg = config or PerturbationConfig()
    if cfg.n_perturb < 1:
        raise ValueError(f"n_perturb must be >= 1, got {cfg.n_perturb!r}")
    x = x.detach()
    t = _targets(target, x.shape[0], x.device)
    explain = _captum_explainer(model, explain_fn)
    with frozen_eval(model), torch.random.fork_rng(devices=_cuda_devices(x)):
        torch.manual_seed(cfg.seed)
        (attr,) = explain((x,), t)
        infid = infidelity(
            model,
            _gaussian_perturbation(cfg.noise_std, cfg.multiply_by_inputs),
            x,
            attr,
            target=t,
            n_perturb_samples=cfg.n_perturb,
            max_examples_per_batch=cfg.max_batch,
            normalize=cfg.normalize,
        )
        torch.manual_seed(cfg.seed)
        sens = sensitivity_max(
            explain,
            x,
            perturb_radius=cfg.perturb_radius,
            n_perturb_samples=cfg.n_perturb,
            max_examples_per_batch=cfg.max_batch,
            target=t,
        )
    return {"infidelity": infid.detach(), "sensitivity_max": sens.detach()}


def _cuda_devices(x: Tensor) -> list[int]:
    """The CUDA device of ``x`` (for :func:`torch.random.fork_rng`), or none on the CPU."""
    return [x.device.index if x.device.index is not None else torch.cuda.current_device()] if x.is_cuda else []


# --------------------------------------------------------------------------------------------
# the model-randomisation sanity check
# --------------------------------------------------------------------------------------------
def randomised_copy(model: nn.Module, seed: int = 0) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` with every layer re-initialised by its own ``reset_parameters``
    (BatchNorm running statistics included), from ``torch.manual_seed(seed)`` in a forked RNG state;
    the original is untouched. Returns the copy and the number of layers reset.

    Raises:
        ValueError: when no weight changed, e.g. an untrained model built right after
            ``torch.manual_seed(seed)`` gets its initial weights back: the check would compare a
            model with itself. Pass another seed.
    """
    twin = copy.deepcopy(model)
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in twin.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):  # BatchNorm's also resets its running statistics
                reset()
                n += 1
    # weights with more than one distinct value (a fresh BatchNorm's ones and zeros never change)
    drawn = [(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True) if p.unique().numel() > 1]
    if drawn and all(torch.equal(p, q) for p, q in drawn):
        raise ValueError(
            f"re-initialising with seed={seed} reproduced the model's weights (was it initialised with that seed?); "
            "pass another seed"
        )
    return twin, n


def spearman_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of two batches of maps, image by image (``[B]``; NaN for a constant map)."""
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = a.detach().flatten(1).cpu().double().numpy(), b.detach().flatten(1).cpu().double().numpy()
    out = np.full(len(fa), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN, as intended
        for i, (u, v) in enumerate(zip(fa, fb, strict=True)):
            out[i] = spearmanr(u, v).statistic
    return torch.from_numpy(out).float()


def randomisation_check(model: nn.Module, x: Tensor, explain_fn: ExplainFn, target: Target, seed: int = 0) -> dict[str, Any]:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps", Sec. 3.1).

    Re-initialises every layer of a copy of ``model`` (:func:`randomised_copy`), recomputes the
    attributions and compares the ``|attribution|`` maps (channels summed) with Spearman's rank
    correlation. A method that explains the model gives a low correlation; one near 1 explains the
    image (an edge detector would pass as an explanation otherwise).

    Returns:
        ``spearman`` ``[B]``, ``mean_spearman`` (float, NaNs ignored), ``n_reset`` (layers re-initialised).
    """
    x = x.detach()
    t = _targets(target, x.shape[0], x.device)
    twin, n_reset = randomised_copy(model, seed)
    maps = []
    for net in (model, twin):
        with frozen_eval(net), torch.enable_grad():
            maps.append(attribution_map(explain_fn(net, x.clone().requires_grad_(True), t).detach(), Reduce.ABS))
    rho = spearman_per_image(*maps)
    return {
        "spearman": rho,
        "mean_spearman": float(np.nanmean(rho.numpy())) if bool(rho.isfinite().any()) else float("nan"),
        "n_reset": n_reset,
    }
