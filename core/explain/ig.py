"""Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks"): the
:class:`Attribution` result, target and baseline resolution, and captum's IG on a faster twin of the model.

IG attributes the target logit's change between a baseline ``b`` and the input ``x`` to pixels:
``IG(x) = (x − b) ⊙ ∫₀¹ ∇f(b + α(x − b)) dα``. Its *completeness* axiom says the attributions sum to
``f(x) − f(b)``; with a quadrature in place of the integral the gap, ``delta = Σ IG − (f(x) − f(b))``,
is the quadrature's error on the 1-D integral ``∫₀¹ g(α) dα`` with ``g(α) = ∇f(γ(α)) · (x − b)``, so
``rel_error = |delta| / |f(x) − f(b)|`` tells whether the integral was computed accurately enough
(Sundararajan et al. recommend checking that the attributions add up, to within 5 %). ``f`` is the
target class *logit*, because that is the model's output and what captum's
``return_convergence_delta`` measures; logits also keep gradients alive where a saturated softmax
would flatten them.

Why a fixed rule and not a completeness-stopped adaptive one: completeness bounds the *sum* of the
attributions, and per-pixel errors cancel in that sum — maps stopped at 1 % completeness were 4–19 %
(relative L2) away from a converged reference, and how many evaluations they got depended on the
model. Maps that are scored therefore use one fixed rule, :data:`SCORING_STEPS` Gauss–Legendre points,
for every model and input; the speed comes from the model side (:func:`~robustdx.core.attacks.folding.fast_twin`:
BatchNorm folded, channels_last), which leaves the function, and so the integral, unchanged.

Inputs are images in [0, 1] (normalisation is inside the model); gradients are taken w.r.t. the
input only, in eval mode, and the model's modes and ``requires_grad`` flags are restored. captum is
imported only when :func:`integrated_gradients` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn

from robustdx.core.attacks import channels_like, frozen_eval
from robustdx.core.attacks.folding import fast_twin
from robustdx.core.explain.baselines import Baseline, make_baseline
from robustdx.core.explain.checks import check_images
from robustdx.core.registry import parse_option

SCORING_STEPS = 64
"""Gauss–Legendre points of every IG map that is scored or compared (experiments, validation scores, the
Fig. 1 grid): one rule for all regimes, so no regime gets a coarser integral than another."""

DEFAULT_POINTS_PER_PASS = 64
"""Path points (images × steps) per forward and backward pass unless the caller says otherwise: bounds
memory (a 224 px ResNet-50 keeps ~0.1 GB of activations per point for the backward pass, so ~6 GB),
as the adaptive IG this replaced did."""


class CaptumMethod(StrEnum):
    """captum's fixed quadrature rules for :func:`integrated_gradients`.

    Note: captum 0.9's ``riemann_trapezoid`` uses steps of 1/n on n points, so its weights sum to
    (n − 1)/n (a 1/n bias); Gauss–Legendre, its default, has no such bias.
    """

    GAUSS_LEGENDRE = "gausslegendre"
    RIEMANN_LEFT = "riemann_left"
    RIEMANN_RIGHT = "riemann_right"
    RIEMANN_MIDDLE = "riemann_middle"
    RIEMANN_TRAPEZOID = "riemann_trapezoid"


@dataclass
class Attribution:
    """IG attributions of a batch and the evidence that they are accurate.

    Attributes:
        attributions: ``[B, C, H, W]``, ``(x − b) ⊙`` the path-averaged gradient of the target logit.
        target: ``[B]`` long, the explained class.
        delta: ``[B]`` captum's convergence delta ``Σ attributions − (f(x) − f(b))`` with ``f`` the
            target *logit* (the model's output), in logit units.
        rel_error: ``[B]`` ``|delta| / |f(x) − f(b)|``, the completeness error as a fraction.
        evaluations: ``[B]`` gradient evaluations (forward + backward at one path point) per image.
        baseline: the baseline kind (``"custom"`` for a tensor baseline).
        method: ``"captum:<rule>"``.
        extra: method details (``fast``: whether captum ran on the folded, channels_last twin).
    """

    attributions: Tensor
    target: Tensor
    delta: Tensor
    rel_error: Tensor
    evaluations: Tensor
    baseline: str
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def converged(self, tol: float = 0.01) -> Tensor:
        """``[B]`` bool: the completeness error is within ``tol``."""
        return self.rel_error <= tol


# ---------------------------------------------------------------------------------------------
# baselines, targets
# ---------------------------------------------------------------------------------------------
def resolve_baseline(x: Tensor, baseline: Baseline | str | Tensor) -> tuple[Tensor, str]:
    """The baseline of each image of ``x`` and its name: a :class:`Baseline` made for ``x``, or a tensor
    of ``x``'s shape or one image's shape (named ``"custom"``)."""
    if isinstance(baseline, Tensor):
        if baseline.shape != x.shape and baseline.shape != x.shape[1:]:
            raise ValueError(f"baseline shape {tuple(baseline.shape)} fits neither x {tuple(x.shape)} nor one image")
        return baseline.detach().to(x).expand_as(x).contiguous(), "custom"
    kind = parse_option(Baseline, baseline, "baseline")
    return make_baseline(x, kind), str(kind)


def resolve_target(logits: Tensor, target: int | Tensor | None) -> Tensor:
    """``[B]`` long targets from the logits of ``x``: the predicted class when ``target`` is None."""
    if target is None:
        return logits.argmax(1)
    n, k = logits.shape
    t = torch.as_tensor(target, device=logits.device).long()
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"target must be an int or a [B]={n} tensor, got shape {tuple(t.shape)}")
    if ((t < 0) | (t >= k)).any():
        raise ValueError(f"target classes must be in [0, {k}), got {t.tolist()}")
    return t.clone()


def relative_error(delta: Tensor, diff: Tensor) -> Tensor:
    """``|delta| / |f(x) − f(b)|``, the completeness error as a fraction of the explained change."""
    return delta.abs() / diff.abs().clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# captum's IG
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _IGRule:
    """captum's quadrature for one call: points, rule and path points per pass."""

    n_steps: int
    method: CaptumMethod
    batch: int | None


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    baseline: Baseline | str | Tensor = Baseline.BLACK,
    *,
    n_steps: int = 50,
    method: CaptumMethod | str = CaptumMethod.GAUSS_LEGENDRE,
    internal_batch_size: int | None = DEFAULT_POINTS_PER_PASS,
    fast: bool = True,
) -> Attribution:
    """IG by captum's ``IntegratedGradients.attribute``, with its completeness error.

    Why a wrapper: the model runs in eval mode with frozen parameters for the call (BatchNorm must
    be a fixed function along the path, and only input gradients are needed), the target defaults
    to the prediction, and the completeness error comes back relative to ``f(x) − f(b)``.

    Args:
        n_steps: quadrature points of ``method`` per image; use :data:`SCORING_STEPS` for maps that are
            scored or compared.
        method: captum's rule, see :class:`CaptumMethod`.
        internal_batch_size: path points per forward and backward pass (captum's; at least the batch
            size is used); None: all ``B · n_steps`` points at once.
        fast: differentiate :func:`~robustdx.core.attacks.folding.fast_twin` (BatchNorm folded,
            channels_last) instead of ``model``: the same function, so the same attributions within
            float rounding. The target and ``f(x) − f(b)`` always come from ``model`` itself.

    Raises:
        ValueError: a bad ``method``, ``baseline`` or ``target``, ``n_steps < 1`` or images that are not
            ``[B, C, H, W]`` floats.

    >>> from robustdx.core.config import ModelConfig
    >>> from robustdx.core.models import build_model
    >>> net = build_model(ModelConfig(arch="test_cnn"))
    >>> integrated_gradients(net, torch.rand(2, 3, 16, 16), n_steps=8).attributions.shape
    torch.Size([2, 3, 16, 16])
    """
    x = check_images(x)
    rule = parse_option(CaptumMethod, method, "method")
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    with frozen_eval(model):
        b, kind = resolve_baseline(x, baseline)
        t, ends = _target_and_ends(model, x, b, target)
        attr = _captum_ig(fast_twin(model) if fast else model, x, b, t, _IGRule(int(n_steps), rule, internal_batch_size))
    diff = ends[1] - ends[0]
    delta = attr.flatten(1).sum(1, dtype=torch.float64) - diff
    return Attribution(
        attributions=attr,
        target=t,
        delta=delta.float(),
        rel_error=relative_error(delta, diff).float(),
        evaluations=torch.full((x.shape[0],), int(n_steps), dtype=torch.long),
        baseline=kind,
        method=f"captum:{rule}",
        extra={"fast": bool(fast)},
    )


def _target_and_ends(model: nn.Module, x: Tensor, b: Tensor, target: int | Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The explained class ``[B]`` and the model's target logits at the baseline and the input (float64):
    one forward pass of ``model`` itself, whatever network the gradients are taken on."""
    with torch.no_grad():
        logits = model(torch.cat([b, x]))
    n = x.shape[0]
    t = resolve_target(logits[n:], target)
    ends = logits.gather(1, t.repeat(2)[:, None]).squeeze(1).double()
    return t, (ends[:n], ends[n:])


def _captum_ig(net: nn.Module, x: Tensor, b: Tensor, t: Tensor, rule: _IGRule) -> Tensor:
    """captum's attributions of ``net`` (detached, contiguous), inputs in ``net``'s memory format."""
    from captum.attr import IntegratedGradients

    batch = None if rule.batch is None else max(int(rule.batch), x.shape[0])
    attr = IntegratedGradients(net).attribute(
        channels_like(x, net),
        baselines=channels_like(b, net),
        target=t,
        n_steps=rule.n_steps,
        method=str(rule.method),
        internal_batch_size=batch,
    )
    return attr.detach().contiguous()
