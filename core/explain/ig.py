"""Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks"): the
:class:`Attribution` result, the target and baseline resolution both IG methods share, and captum's IG.

IG attributes the target logit's change between a baseline ``b`` and the input ``x`` to pixels:
``IG(x) = (x − b) ⊙ ∫₀¹ ∇f(b + α(x − b)) dα``. Its *completeness* axiom says the attributions sum to
``f(x) − f(b)``; with a quadrature in place of the integral the gap, ``delta = Σ IG − (f(x) − f(b))``,
is the quadrature's error on the 1-D integral ``∫₀¹ g(α) dα`` with ``g(α) = ∇f(γ(α)) · (x − b)``, so
``rel_error = |delta| / |f(x) − f(b)|`` tells whether the integral was computed accurately enough
(Sundararajan et al. recommend checking that the attributions add up, to within 5 %). ``f`` is the
target class *logit*, because that is the model's output and what captum's
``return_convergence_delta`` measures; logits also keep gradients alive where a saturated softmax
would flatten them.

Two entry points return the same :class:`Attribution`:

* :func:`integrated_gradients` (here) — captum's ``IntegratedGradients`` (fixed rule, ``n_steps``
  points), the reference implementation and what the service may call for a fixed budget;
* :func:`robustdx.core.explain.adaptive.fast_integrated_gradients` — the same integral by adaptive,
  nested quadrature that stops each image as soon as its completeness error is within ``tol``.

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

from robustdx.core.attacks import frozen_eval
from robustdx.core.explain.baselines import Baseline, make_baseline
from robustdx.core.explain.checks import check_images
from robustdx.core.registry import parse_option


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
        method: ``"captum:<rule>"`` or ``"fast:<rule>"``.
        extra: method details (the fast method's path points per image, ``tol`` and stop rule).
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
# captum reference
# ---------------------------------------------------------------------------------------------
def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    baseline: Baseline | str | Tensor = Baseline.BLACK,
    *,
    n_steps: int = 50,
    method: CaptumMethod | str = CaptumMethod.GAUSS_LEGENDRE,
    internal_batch_size: int | None = None,
) -> Attribution:
    """IG by captum's ``IntegratedGradients.attribute`` with its convergence delta.

    Why a wrapper: the model runs in eval mode with frozen parameters for the call (BatchNorm must
    be a fixed function along the path, and only input gradients are needed), the target defaults
    to the prediction, and the completeness error comes back relative to ``f(x) − f(b)`` — recovered
    from captum's own delta as ``Σ attributions − delta``, so no extra forward passes are spent.
    The keyword arguments are captum's, passed through.
    """
    from captum.attr import IntegratedGradients

    x = check_images(x)
    rule = parse_option(CaptumMethod, method, "method")
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    with frozen_eval(model):
        b, kind = resolve_baseline(x, baseline)
        with torch.no_grad():
            t = resolve_target(model(x), target)
        attr, delta = IntegratedGradients(model).attribute(
            x,
            baselines=b,
            target=t,
            n_steps=int(n_steps),
            method=str(rule),
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    attr, delta = attr.detach(), delta.detach()
    diff = attr.flatten(1).sum(1, dtype=torch.float64) - delta.double()
    return Attribution(
        attributions=attr,
        target=t,
        delta=delta.float(),
        rel_error=relative_error(delta.double(), diff).float(),
        evaluations=torch.full((x.shape[0],), int(n_steps), dtype=torch.long),
        baseline=kind,
        method=f"captum:{rule}",
    )
