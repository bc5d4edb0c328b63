"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML — the gradient attack of AutoAttack), L∞, for evaluation.

Why: PGD's fixed step size is a tuning knob an evaluation can get wrong (too large: it oscillates; too small:
it stalls). APGD starts at 2ε, keeps momentum 0.75, halves the step at checkpoints when progress stalls and
restarts from the best point — no knob to tune. It follows AutoAttack's reference code (and torchattacks
3.5.1, which the tests use as an oracle) step for step, including its checkpoint rounding and oscillation
test, with two changes for evaluation: an item leaves the batch at its first misclassified iterate, and the
random start comes from a private CPU generator. With two classes AutoAttack's DLR loss is undefined; the
``margin`` loss (best other logit minus the true one) avoids float32 saturation of the cross-entropy on very
confident binary models and has the same sign gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustdx.core.attacks.base import channels_like, frozen_eval
from robustdx.core.attacks.folding import fast_twin
from robustdx.core.attacks.outcome import Outcome, clean_outcome

ApgdLoss = Literal["ce", "margin"]


@dataclass(frozen=True)
class ApgdSettings:
    """The attack's parameters (AutoAttack's defaults)."""

    eps: float
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75  # a checkpoint halves the step when fewer than rho of the steps since the last one improved
    momentum: float = 0.75
    loss: ApgdLoss = "ce"
    seed: int = 0


def _loss(logits: Tensor, y: Tensor, loss: ApgdLoss) -> Tensor:
    if loss == "ce":
        return F.cross_entropy(logits.float(), y, reduction="none")
    true = logits.float().gather(1, y[:, None])[:, 0]
    other = logits.float().scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def _loss_grad(net: nn.Module, x: Tensor, y: Tensor, loss: ApgdLoss) -> tuple[Tensor, Tensor, Tensor]:
    """Per-item loss, its input gradient and whether the point is misclassified."""
    x = channels_like(x.detach(), net).requires_grad_(True)
    with torch.enable_grad():
        logits = net(x)
        value = _loss(logits, y, loss)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach(), logits.detach().argmax(1) != y


def _checkpoints(steps: int) -> tuple[int, int, int]:
    """First checkpoint gap, its decrement and its floor: 22 %, 3 % and 6 % of the steps (AutoAttack's rounding)."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


class _Run:
    """One APGD run on the survivors ``idx`` of a batch; per-item state, compacted as items break."""

    def __init__(
        self, net: nn.Module, batch: tuple[Tensor, Tensor], idx: Tensor, s: ApgdSettings, gen: torch.Generator, out: Outcome
    ) -> None:
        self.net, self.s, self.out, self.idx = net, s, out, idx
        x, y = batch
        self.x0, self.y = x.index_select(0, idx), y.index_select(0, idx)
        self.shape = (-1,) + (1,) * (x.ndim - 1)
        t = (2 * torch.rand(self.x0.shape, generator=gen) - 1).to(self.x0)  # uniform, rescaled to ||δ||∞ = ε
        self.x_adv = (self.x0 + s.eps * t / t.flatten(1).abs().amax(1).view(self.shape)).clamp(0.0, 1.0)
        self.loss, self.grad, wrong = _loss_grad(net, self.x_adv, self.y, s.loss)
        out.evaluations.index_add_(0, idx, torch.ones_like(idx))
        n = len(idx)
        self.x_old, self.x_best = self.x_adv.clone(), self.x_adv.clone()
        self.grad_best, self.loss_best = self.grad.clone(), self.loss.clone()
        self.loss_prev = torch.zeros_like(self.loss)  # AutoAttack compares the first window's first loss with 0
        self.step = torch.full((n,), 2.0 * s.eps, device=x.device)
        self.increases = torch.zeros_like(self.loss)
        self.best_at_checkpoint = self.loss.clone()
        self.reduced = torch.ones(n, dtype=torch.bool, device=x.device)
        self._retire(wrong)

    def _retire(self, wrong: Tensor) -> None:
        """Record the items misclassified at the current point and drop them from the batch."""
        if not bool(wrong.any()):
            return
        done = self.idx[wrong]
        self.out.x_adv.index_copy_(0, done, self.x_adv[wrong])
        self.out.fooled.index_fill_(0, done, True)
        keep = ~wrong
        self.idx = self.idx[keep]
        for name in ("x0", "y", "x_adv", "x_old", "x_best", "grad", "grad_best", "loss", "loss_best", "loss_prev", "step",
                     "increases", "best_at_checkpoint", "reduced"):  # fmt: skip
            setattr(self, name, getattr(self, name)[keep])

    def iterate(self, it: int) -> None:
        """One momentum step from the current point; then the new point's loss and gradient."""
        s = self.s
        with torch.no_grad():
            lo, hi = (self.x0 - s.eps).clamp(min=0.0), (self.x0 + s.eps).clamp(max=1.0)
            a = s.momentum if it > 0 else 1.0
            z = torch.minimum(torch.maximum(self.x_adv + self.step.view(self.shape) * self.grad.sign(), lo), hi)
            new = self.x_adv + a * (z - self.x_adv) + (1 - a) * (self.x_adv - self.x_old)
            self.x_old, self.x_adv = self.x_adv, torch.minimum(torch.maximum(new, lo), hi)
        self.loss, self.grad, wrong = _loss_grad(self.net, self.x_adv, self.y, s.loss)
        self.out.evaluations.index_add_(0, self.idx, torch.ones_like(self.idx))
        with torch.no_grad():
            better = self.loss > self.loss_best
            self.x_best[better], self.grad_best[better] = self.x_adv[better], self.grad[better]
            self.loss_best[better] = self.loss[better]
            self.increases += (self.loss > self.loss_prev).float()
            self.loss_prev = self.loss
        self._retire(wrong)

    def checkpoint(self, gap: int) -> None:
        """Halve the step (and go back to the best point) where progress stalled since the last checkpoint."""
        with torch.no_grad():
            oscillating = self.increases <= gap * self.s.rho
            stuck = ~self.reduced & (self.best_at_checkpoint >= self.loss_best)
            halve = oscillating | stuck
            self.reduced, self.best_at_checkpoint = halve, self.loss_best.clone()
            self.step[halve] /= 2.0
            self.x_adv[halve], self.grad[halve] = self.x_best[halve], self.grad_best[halve]
            self.increases.zero_()

    def run(self) -> None:
        gap, decrement, floor = _checkpoints(self.s.steps)
        since = 0
        for it in range(self.s.steps):
            if len(self.idx) == 0:
                return
            self.iterate(it)
            since += 1
            if since == gap:
                self.checkpoint(gap)
                since, gap = 0, max(gap - decrement, floor)
        self.out.x_adv.index_copy_(0, self.idx, self.x_best)  # survivors: this run's highest-loss point


def apgd_outcome(model: nn.Module, x: Tensor, y: Tensor, settings: ApgdSettings) -> Outcome:
    """APGD against ``model`` on ``x`` (labels ``y``); see the module docstring.

    Returns:
        An :class:`~robustdx.core.attacks.outcome.Outcome`: fooled where the clean input or any iterate of any
        restart was misclassified (that point kept), else the last restart's highest-loss point.
    """
    if not 0 <= settings.eps <= 1:
        raise ValueError(f"eps must be in [0, 1] pixel units, got {settings.eps!r} (did you mean {settings.eps:g}/255?)")
    out = clean_outcome(model, x, y)
    if settings.eps == 0:
        return out
    gen = torch.Generator().manual_seed(settings.seed)
    with frozen_eval(model):
        net = fast_twin(model)
        for _ in range(settings.restarts):
            idx = (~out.fooled).nonzero().flatten()
            if idx.numel() == 0:
                break
            _Run(net, (x.detach(), y), idx, settings, gen, out).run()
    return out
