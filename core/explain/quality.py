"""Scores of attribution maps: localisation, faithfulness, robustness, the randomisation sanity checks and
the plain-gradient control map.

Why: the paper's interpretability claim rests on a few hand-picked Integrated-Gradients pictures
(SCIENCE.md, weakness 7). Here attributions are scored, per image, so regimes can be compared with
confidence intervals — and each score only means something beside a reference:

* localisation against ground truth: the pointing game (Zhang et al. 2018) and the fraction of
  positive attribution inside the BUSI lesion masks or the Camelyon/PCam centre 32×32 label region;
* faithfulness: deletion / insertion AUC (Petsiuk et al. 2018, RISE), each curve divided by the
  model's probability on the unperturbed image and reported beside the same curves for random pixel
  orders (raw probabilities let a near-constant model rank best on deletion and worst on insertion);
  infidelity (Yeh et al. 2019) with the perturbation that matches the attribution's baseline;
* robustness of the explanation: max-sensitivity (Yeh et al. 2019);
* the model-randomisation sanity checks (Adebayo et al. 2018): a map that survives randomising the
  weights explains the image, not the model — for the fully randomised model and cascading, layer
  group by layer group from the top;
* the plain-gradient control (:func:`gradient_map`): every score of an IG map can be reported beside
  the same score of the input gradient.

Maps are ``amap: [B, H, W]`` tensors produced elsewhere (e.g. channel-summed IG, see
:func:`robustdx.core.explain.maps.attribution_map`). Functions that need attributions recomputed take ``explain_fn(model, inputs,
target) -> attributions`` (``[B, C, H, W]`` or ``[B, H, W]``): the model is an argument because
the randomisation checks must explain a different model. Models are run in eval mode with parameter
gradients off and their state restored (:func:`robustdx.core.attacks.base.frozen_eval`); random draws
come from seeds, and the caller's RNG state is restored. The images deletion / insertion paste in are
the shared baselines of :mod:`robustdx.core.explain.baselines`.
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
from robustdx.core.explain.checks import check_images
from robustdx.core.explain.ig import resolve_baseline, resolve_target
from robustdx.core.explain.maps import Reduce, attribution_map
from robustdx.core.util import epoch_seed

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
@dataclass(frozen=True)
class DeletionConfig:
    """The settings of :func:`deletion_insertion_auc`.

    Attributes:
        steps: the curves are sampled at the pixel fractions ``k/steps``, ``k = 0..steps``.
        baseline: the image the deleted pixels take (and insertion starts from): a :class:`Baseline` of
            ``x`` — ``black``, ``blur`` (RISE's blur, :data:`~robustdx.core.explain.baselines.RISE_BLUR`),
            ``noise`` or ``mean`` — or a tensor broadcastable to ``x``.
        n_random: random pixel orders averaged into the reference curves.
        seed: seed of the random orders (a generator of their own: the global RNG is not touched).
    """

    steps: int = 16
    baseline: Baseline | str | Tensor = Baseline.BLACK
    n_random: int = 4
    seed: int = 0


def _baseline(x: Tensor, baseline: Baseline | str | Tensor) -> Tensor:
    """The image the deleted pixels take: a :class:`Baseline` of ``x`` (``blur`` is RISE's insertion
    blur, kernel 11, σ 5, milder than IG's default blur baseline) or a tensor broadcastable to ``x``."""
    if isinstance(baseline, Tensor):
        return baseline.to(x).expand_as(x)
    return make_baseline(x, baseline, blur=RISE_BLUR)


def _ranks(scores: Tensor) -> Tensor:
    """``[B, 1, H, W]`` rank of every pixel by ``scores`` ``[B, H, W]``, highest first (0), ties in
    pixel order."""
    b, h, w = scores.shape
    order = torch.argsort(scores.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
    return ranks.view(b, 1, h, w)


def _target_probability(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    return torch.softmax(model(x).float(), 1).gather(1, t.view(-1, 1)).squeeze(1)


def _curves(model: nn.Module, x: Tensor, base: Tensor, t: Tensor, rank: Tensor, counts: list[int]) -> tuple[Tensor, Tensor]:
    """Target probabilities ``[B, len(counts)]`` with the ``n_k`` top-ranked pixels deleted (pasted from
    ``base``) and inserted (into ``base``); one forward pass of both per ``n_k``."""
    b = x.shape[0]
    dele, ins = [], []
    for n_k in counts:
        top = rank < n_k
        p = _target_probability(model, torch.cat([torch.where(top, base, x), torch.where(top, x, base)]), t.repeat(2))
        dele.append(p[:b])
        ins.append(p[b:])
    return torch.stack(dele, 1), torch.stack(ins, 1)


def _random_ranks(shape: tuple[int, int, int], cfg: DeletionConfig, device: torch.device) -> list[Tensor]:
    """``cfg.n_random`` random pixel rankings, drawn on the CPU from ``cfg.seed`` (the same on every device)."""
    gen = torch.Generator().manual_seed(int(cfg.seed))
    return [_ranks(torch.rand(shape, generator=gen)).to(device) for _ in range(cfg.n_random)]


def _check_deletion(x: Tensor, amap: Tensor, cfg: DeletionConfig) -> None:
    if x.ndim != 4 or x.shape[0] != amap.shape[0] or x.shape[2:] != amap.shape[1:]:
        raise ValueError(f"x {tuple(x.shape)} must be [B, C, H, W] with the amap's B, H, W {tuple(amap.shape)}")
    if cfg.steps < 1:
        raise ValueError(f"DeletionConfig.steps must be >= 1, got {cfg.steps!r}")
    if cfg.n_random < 1:
        raise ValueError(f"DeletionConfig.n_random must be >= 1 (the random-order reference), got {cfg.n_random!r}")


def deletion_insertion_auc(
    model: nn.Module, x: Tensor, amap: Tensor, target: Target, config: DeletionConfig | None = None
) -> dict[str, Tensor]:
    """Deletion and insertion scores (Petsiuk et al. 2018, "RISE", Sec. 4.1), normalised and beside a
    random-order reference, batched.

    Pixels are ranked by ``amap`` (all channels of a pixel together). Deletion replaces the top
    ``k/steps`` fraction of pixels with the baseline, insertion pastes them into the baseline,
    ``k = 0..steps``. Each curve is the target-class probability divided by the probability ``p(x)``
    on the unperturbed image — so deletion starts and insertion ends at 1, and a model that ignores
    its input scores 1 on both — and the score is its area (trapezoid rule over the fraction changed).
    The same curves for ``n_random`` random pixel orders (averaged) are the reference: a faithful map
    deletes faster (``deletion_diff < 0``) and inserts faster (``insertion_diff > 0``) than random.
    Explain a class the model gives weight to (the prediction): the normalisation divides by ``p(x)``.

    Args:
        config: steps, baseline and random orders; None: the defaults of :class:`DeletionConfig`.

    Returns:
        ``deletion``, ``insertion``, ``deletion_random``, ``insertion_random``, ``deletion_diff``
        (map − random) and ``insertion_diff`` ``[B]``; ``p_clean`` ``[B]`` (``p(x)``: a raw AUC is the
        normalised one times it); the normalised curves ``deletion_curve``, ``insertion_curve``,
        ``deletion_random_curve``, ``insertion_random_curve`` ``[B, steps+1]``; ``fractions`` ``[steps+1]``.

    Raises:
        ValueError: shapes that do not fit, ``steps < 1``, ``n_random < 1``, an unknown baseline or a
            bad target.
    """
    cfg = config or DeletionConfig()
    amap = _check_map(amap)
    _check_deletion(x, amap, cfg)
    x = x.detach()
    b, _, h, w = x.shape
    base = _baseline(x, cfg.baseline)
    t = _targets(target, b, x.device)
    counts = [round(k * h * w / cfg.steps) for k in range(cfg.steps + 1)]
    with frozen_eval(model), torch.no_grad():
        p_x = _target_probability(model, x, t)
        curves = _curves(model, x, base, t, _ranks(amap.to(x.device)), counts)
        random = [_curves(model, x, base, t, r, counts) for r in _random_ranks((b, h, w), cfg, x.device)]
    scale = p_x.clamp_min(torch.finfo(p_x.dtype).tiny).view(-1, 1)
    out = {"p_clean": p_x, "fractions": torch.tensor(counts, dtype=torch.float32, device=x.device) / (h * w)}
    for i, kind in enumerate(("deletion", "insertion")):
        curve = curves[i] / scale
        ref = torch.stack([r[i] for r in random]).mean(0) / scale
        out[f"{kind}_curve"], out[f"{kind}_random_curve"] = curve, ref
        out[kind] = torch.trapezoid(curve, out["fractions"], dim=1)
        out[f"{kind}_random"] = torch.trapezoid(ref, out["fractions"], dim=1)
        out[f"{kind}_diff"] = out[kind] - out[f"{kind}_random"]
    return out


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


def _gaussian_perturbation(noise_std: float) -> Callable[..., tuple[Tensor, Tensor]]:
    """captum ``perturb_func`` returning ``(noise, x − I)`` for Gaussian ``noise`` (Yeh et al. 2019, Sec. 3).

    Called with baselines (attributions of the ``(x − b) ⊙ …`` family: IG from ``b``, gradient×input
    with ``b = 0``) the perturbation is ``I = (x − b) ⊙ noise``: IG credits each pixel for moving from
    ``b`` to ``x``, so the perturbation must scale each pixel by that same move. ``noise`` itself goes
    to captum, whose infidelity then compares ``Σ noise ⊙ attr`` with ``f(x) − f(x − I)`` — exactly
    equal for IG of a linear model. Without baselines (gradient-like maps) ``I = noise``.
    """

    def perturb(inputs: Tensor, baselines: Tensor | None = None) -> tuple[Tensor, Tensor]:
        noise = torch.randn_like(inputs) * noise_std
        return noise, inputs - (noise if baselines is None else (inputs - baselines) * noise)

    return perturb


@dataclass(frozen=True)
class PerturbationConfig:
    """The perturbations of :func:`infidelity_and_sensitivity`.

    Attributes:
        n_perturb: perturbations per image (for each of the two scores).
        noise_std: std of the Gaussian perturbations of infidelity (see :func:`_gaussian_perturbation`).
        perturb_radius: L∞ radius (pixel units) of the uniform input noise of max-sensitivity.
        normalize: captum's scale-invariant infidelity (the map rescaled by its best-fitting constant).
        seed: seed of both perturbation draws; the caller's RNG state is restored.
        max_batch: captum's ``max_examples_per_batch`` (bounds memory: ``B·n_perturb`` images otherwise).
    """

    n_perturb: int = 10
    noise_std: float = 0.03
    perturb_radius: float = 0.02
    normalize: bool = False
    seed: int = 0
    max_batch: int | None = None


def infidelity_and_sensitivity(
    model: nn.Module,
    x: Tensor,
    explain_fn: ExplainFn,
    target: Target,
    config: PerturbationConfig | None = None,
    *,
    baseline: Baseline | str | Tensor | None,
) -> dict[str, Tensor]:
    """Infidelity and max-sensitivity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of
    explanations"), via ``captum.metrics.infidelity`` and ``captum.metrics.sensitivity_max``.

    Infidelity is ``E_I[(Iᵀφ(x) − (f_t(x) − f_t(x − I)))²]`` with Gaussian perturbations of std
    ``noise_std`` scaled to the attribution's baseline (see :func:`_gaussian_perturbation`) and ``f_t``
    the target logit; 0 means the map predicts the model's response to perturbations. Max-sensitivity is
    the largest relative change of the map (Frobenius norm) under uniform input noise of radius
    ``perturb_radius`` (L∞, pixel units).

    Args:
        explain_fn: ``explain_fn(model, inputs, target)``, see :data:`ExplainFn`.
        config: the perturbations; None: the defaults of :class:`PerturbationConfig`.
        baseline: the baseline ``b`` the attributions integrate from (IG's, as a :class:`Baseline` of
            ``x`` or a tensor of ``x``'s or one image's shape; ``"black"`` for gradient×input), or None
            for gradient-like maps (:func:`gradient_map`, SmoothGrad). Required: a wrong one makes even
            exact attributions look unfaithful.

    Returns:
        ``infidelity`` and ``sensitivity_max``, each ``[B]``.
    """
    cfg = config or PerturbationConfig()
    if cfg.n_perturb < 1:
        raise ValueError(f"n_perturb must be >= 1, got {cfg.n_perturb!r}")
    x = x.detach()
    t = _targets(target, x.shape[0], x.device)
    b = None if baseline is None else resolve_baseline(x, baseline)[0]
    explain = _captum_explainer(model, explain_fn)
    with frozen_eval(model), torch.random.fork_rng(devices=_cuda_devices(x)):
        torch.manual_seed(cfg.seed)
        (attr,) = explain((x,), t)
        infid = infidelity(
            model,
            _gaussian_perturbation(cfg.noise_std),
            x,
            attr,
            baselines=b,
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


def _model_cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices holding ``model``'s parameters (their RNGs draw re-initialised weights)."""
    return sorted({d for p in model.parameters() for d in _cuda_devices(p)})


# --------------------------------------------------------------------------------------------
# the model-randomisation sanity checks
# --------------------------------------------------------------------------------------------
def _reset(module: nn.Module) -> int:
    """Re-initialise every submodule of ``module`` by its own ``reset_parameters`` (BatchNorm's also
    resets its running statistics); returns how many were reset."""
    n = 0
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
            n += 1
    return n


def _check_redrawn(before: nn.Module, after: nn.Module, seed: int) -> None:
    """Raise when re-initialising left every drawn weight as it was (the check would compare a model
    with itself). Only weights with more than one distinct value count: a fresh BatchNorm's ones and
    zeros never change."""
    drawn = [(p, q) for p, q in zip(before.parameters(), after.parameters(), strict=True) if p.unique().numel() > 1]
    if drawn and all(torch.equal(p, q) for p, q in drawn):
        raise ValueError(
            f"re-initialising with seed={seed} reproduced the model's weights (was it initialised with that seed?); "
            "pass another seed"
        )


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
    with torch.random.fork_rng(devices=_model_cuda_devices(model)):
        torch.manual_seed(seed)
        n = _reset(twin)
    _check_redrawn(model, twin, seed)
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


def _nanmean(rho: Tensor) -> float:
    """Mean of a ``[B]`` correlation, NaNs (constant maps) ignored; NaN when every entry is NaN."""
    return float(np.nanmean(rho.numpy())) if bool(rho.isfinite().any()) else float("nan")


def _abs_map(net: nn.Module, x: Tensor, t: Tensor, explain_fn: ExplainFn) -> Tensor:
    """``|attribution|`` map ``[B, H, W]`` (channels summed) of ``net``, explained frozen and in eval mode."""
    with frozen_eval(net), torch.enable_grad():
        return attribution_map(explain_fn(net, x.clone().requires_grad_(True), t).detach(), Reduce.ABS)


def randomisation_check(model: nn.Module, x: Tensor, explain_fn: ExplainFn, target: Target, seed: int = 0) -> dict[str, Any]:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps", Sec. 3.1).

    Re-initialises every layer of a copy of ``model`` (:func:`randomised_copy`), recomputes the
    attributions and compares the ``|attribution|`` maps (channels summed) with Spearman's rank
    correlation. A method that explains the model gives a low correlation; one near 1 explains the
    image (an edge detector would pass as an explanation otherwise). :func:`cascading_randomisation`
    adds the layer-by-layer view.

    Returns:
        ``spearman`` ``[B]``, ``mean_spearman`` (float, NaNs ignored), ``n_reset`` (layers re-initialised).
    """
    x = x.detach()
    t = _targets(target, x.shape[0], x.device)
    twin, n_reset = randomised_copy(model, seed)
    rho = spearman_per_image(_abs_map(model, x, t, explain_fn), _abs_map(twin, x, t, explain_fn))
    return {"spearman": rho, "mean_spearman": _nanmean(rho), "n_reset": n_reset}


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomisation_stages(model: nn.Module) -> list[str]:
    """The layer groups :func:`cascading_randomisation` re-initialises, in order: top first.

    For a :class:`~robustdx.core.models.RobustDxNet` (``classifier`` over ``encoder``): the classifier
    head, then the encoder's top-level blocks that hold weights from the last to the first (a ResNet's
    ``layer4`` … ``layer1``, ``bn1``, ``conv1``; ``test_cnn``'s three conv blocks). For any other model:
    its top-level children that hold weights, last first. The names are ``model.get_submodule`` paths.

    >>> randomisation_stages(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    ['2', '0']
    """
    encoder, head = getattr(model, "encoder", None), getattr(model, "classifier", None)
    if isinstance(encoder, nn.Module) and isinstance(head, nn.Module):
        blocks = [f"encoder.{name}" for name, child in encoder.named_children() if _has_weights(child)]
        return ["classifier", *reversed(blocks)]
    return [name for name, child in reversed(list(model.named_children())) if _has_weights(child)]


def cascading_randomisation(model: nn.Module, x: Tensor, explain_fn: ExplainFn, target: Target, seed: int = 0) -> dict[str, Any]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps",
    Sec. 3.1 and Fig. 2): re-initialise a copy of ``model`` cumulatively from the top — the classifier
    head first, then the encoder's blocks from the last to the first (:func:`randomisation_stages`) —
    and after each stage compare the ``|attribution|`` maps with the trained model's (Spearman, per image).

    Why beside :func:`randomisation_check`: a map can survive a randomised head and only change when the
    early layers go (it then explains low-level features, not the decision); the cascade shows at which
    depth the map stops depending on the trained weights. A faithful map's correlation drops from the
    first stage on.

    Stage ``i`` (0 = the head) is re-initialised by its layers' ``reset_parameters`` from
    ``torch.manual_seed(epoch_seed(seed, i))`` (:func:`robustdx.core.util.epoch_seed`) in a forked RNG
    state, so the draw does not depend on what ``explain_fn`` consumes; the original is untouched.

    Returns:
        ``stages`` (names, top first), ``spearman`` ``[S, B]``, ``mean_spearman`` (``S`` floats, NaNs
        ignored) and ``full``: :func:`randomisation_check`'s result for the fully randomised model
        (:func:`randomised_copy` with ``seed``).

    Raises:
        ValueError: a model with no weights, or a stage whose re-initialisation reproduced its weights.
    """
    x = x.detach()
    t = _targets(target, x.shape[0], x.device)
    stages = randomisation_stages(model)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no layers with weights to randomise")
    trained = _abs_map(model, x, t, explain_fn)
    twin = copy.deepcopy(model)
    rhos = []
    for i, name in enumerate(stages):
        with torch.random.fork_rng(devices=_model_cuda_devices(model)):
            torch.manual_seed(epoch_seed(seed, i))
            _reset(twin.get_submodule(name))
        _check_redrawn(model.get_submodule(name), twin.get_submodule(name), epoch_seed(seed, i))
        rhos.append(spearman_per_image(trained, _abs_map(twin, x, t, explain_fn)))
    full, n_reset = randomised_copy(model, seed)
    rho_full = spearman_per_image(trained, _abs_map(full, x, t, explain_fn))
    return {
        "stages": stages,
        "spearman": torch.stack(rhos),
        "mean_spearman": [_nanmean(r) for r in rhos],
        "full": {"spearman": rho_full, "mean_spearman": _nanmean(rho_full), "n_reset": n_reset},
    }


# --------------------------------------------------------------------------------------------
# the plain-gradient control
# --------------------------------------------------------------------------------------------
def gradient_map(model: nn.Module, x: Tensor, target: int | Tensor | None = None) -> Tensor:
    """The input gradient of the target logit, ``∂f_t/∂x`` ``[B, C, H, W]`` (Simonyan, Vedaldi & Zisserman
    2014, "Deep inside convolutional networks", without their absolute value).

    Why: it is the simplest attribution, so an IG score means little until it beats the same score of
    this map (and a robust model's gradients are themselves more interpretable, Tsipras et al. 2019).
    The gradient is taken w.r.t. the input only, with the model frozen in eval mode and restored after;
    the signature fits :data:`ExplainFn`, so it can be handed to every score here (with
    ``baseline=None`` for infidelity).

    Args:
        target: the explained class, an int or ``[B]``; None: the prediction.

    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    >>> gradient_map(net, torch.rand(2, 3, 2, 2), 1).shape
    torch.Size([2, 3, 2, 2])
    """
    x = check_images(x)
    with frozen_eval(model), torch.enable_grad():
        inp = x.clone().requires_grad_(True)
        logits = model(inp)
        t = resolve_target(logits.detach(), target)
        (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), inp)
    return grad.detach()
