"""The robustness protocol of the science reports: fixed items, the worst case over attacks per item, sanity
points and the flags that say when a number cannot be trusted.

Why this shape (the science issue; Carlini et al. 2019, "On evaluating adversarial robustness"):

* **the same items for every model** — one seeded permutation of the test split (:func:`evaluation_items`);
  the headline budgets attack its whole length, the rest of the ε grid a prefix of it, Square a shorter
  prefix, so every comparison between models, attacks and budgets is paired, item by item;
* **the worst case over attacks** — an item counts as robust only if PGD (every iterate checked, restarts),
  APGD (no step size to get wrong) and, where it runs, the gradient-free Square attack all fail on it;
* **attacks that can expose gradient masking** — Square beating the gradient attacks at the training ε, robust
  accuracy not falling with ε, or accuracy above ≈ 0 at sanity budgets far beyond the training ε (16/255,
  64/255 on [0, 1] images) flag the cell. Square also runs on whatever the gradient attacks leave standing at
  the sanity budgets (few items, so cheap): a sanity flag then says whether a gradient-free attack breaks
  what they could not (the gradient attacks are failing) or nothing does (the model resists the budget, or
  every attack fails);
* **intervals on every number** — Wilson intervals for accuracies and per-class recalls (they do not
  collapse at 0 the way a percentile bootstrap does).

Attacks stop spending on items already broken (:mod:`robustdx.core.attacks.outcome`): the whole PCam test
split at two budgets costs minutes, not hours.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robustdx.core.attacks import ApgdSettings, Outcome, apgd_outcome, clean_outcome, merge, pgd_outcome, square_outcome
from robustdx.core.config import AttackConfig, SuiteConfig
from robustdx.core.evaluation.robustness import eps_label
from robustdx.core.evaluation.statistics import proportion


def evaluation_items(n_total: int, n: int | None, split_seed: int) -> np.ndarray:
    """One seeded permutation of the test split's indices (its first ``n``): the items every model, attack and
    budget is evaluated on. Its prefixes are nested, so the smaller sets (grid, Square, attributions) are
    subsets of the larger ones."""
    perm = np.random.default_rng(np.random.SeedSequence([split_seed, 7_919])).permutation(n_total)
    return perm if n is None else perm[: min(n, n_total)]


def gradient_worst_case(model: nn.Module, x: Tensor, y: Tensor, eps: float, cfg: SuiteConfig) -> dict[str, Outcome]:
    """PGD's outcome on ``x``, APGD's on the items PGD left standing, and their union (``"worst"``).

    Why APGD runs on PGD's survivors only (AutoAttack's order): an item PGD broke is broken whatever APGD
    does, so attacking it again changes no verdict and cost most of APGD's time on weak models. What APGD
    breaks is therefore what PGD missed (``apgd_only_broken`` in the record: a large count says PGD is weak).
    """
    pgd = AttackConfig(eps=eps, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts)
    outcomes = {"pgd": _batched(lambda xb, yb, k: pgd_outcome(model, xb, yb, pgd, seed=cfg.seed + k), x, y, cfg.batch_size)}
    outcomes["worst"] = outcomes["pgd"]
    if cfg.apgd_steps:
        s = ApgdSettings(eps=eps, steps=cfg.apgd_steps, loss=cfg.apgd_loss, seed=cfg.seed)
        apgd = on_survivors(lambda xb, yb, _k: apgd_outcome(model, xb, yb, s), x, y, ~outcomes["pgd"].fooled, cfg.batch_size)
        outcomes["apgd"] = apgd
        outcomes["worst"] = merge(outcomes["pgd"], apgd)
    return outcomes


def square_on_survivors(model: nn.Module, x: Tensor, y: Tensor, eps: float, standing: Tensor, cfg: SuiteConfig) -> Outcome:
    """Square on the items the gradient attacks left ``standing`` (the others cannot change the verdict), so
    whatever it breaks, it broke where PGD and APGD failed."""

    def attack(xb: Tensor, yb: Tensor, k: int) -> Outcome:
        return square_outcome(model, xb, yb, eps, n_queries=cfg.square_queries, p_init=cfg.square_p_init, seed=cfg.seed + k)

    return on_survivors(attack, x, y, standing, cfg.batch_size)


def on_survivors(attack: Callable[[Tensor, Tensor, int], Outcome], x: Tensor, y: Tensor, standing: Tensor, batch: int) -> Outcome:
    """``attack`` (batched) on the ``standing`` items only; the others come back un-fooled at their clean
    point with no evaluations spent."""
    idx = standing.nonzero().flatten()
    zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
    out = Outcome(x.detach().clone(), zeros.bool(), zeros.clone())
    if idx.numel() == 0:
        return out
    found = _batched(attack, x[idx], y[idx], batch)
    out.x_adv[idx], out.fooled[idx], out.evaluations[idx] = found.x_adv, found.fooled, found.evaluations
    return out


def _batched(attack: Any, x: Tensor, y: Tensor, batch: int) -> Outcome:
    parts = [attack(x[i : i + batch], y[i : i + batch], k) for k, i in enumerate(range(0, len(x), batch))]
    if not parts:
        return Outcome(x.clone(), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long))
    return Outcome(
        torch.cat([p.x_adv for p in parts]), torch.cat([p.fooled for p in parts]), torch.cat([p.evaluations for p in parts])
    )


def _robust_fields(robust: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, Any]:
    """What a budget's record derives from its per-item verdicts: robust accuracy with its Wilson interval, per
    class, balanced, and the items themselves (for the paired tests)."""
    return {
        "n": int(len(robust)),
        "robust_acc": proportion(int(robust.sum()), len(robust)).to_json(),
        "robust_recall": [
            proportion(int(robust[labels == c].sum()), int((labels == c).sum())).to_json() if (labels == c).any() else None
            for c in range(n_classes)
        ],
        "robust_balanced_acc": float(np.mean([robust[labels == c].mean() for c in range(n_classes) if (labels == c).any()])),
        "robust_items": robust.astype(int).tolist(),
    }


def _record(eps: float, role: str, y: Tensor, clean: Tensor, outcomes: dict[str, Outcome], n_classes: int) -> dict[str, Any]:
    """The JSON record of one budget: robust accuracy with its Wilson interval, per class, per attack, and the
    per-item outcomes the paired tests need."""
    rec: dict[str, Any] = {
        "eps": eps,
        "eps_label": eps_label(eps),
        "role": role,
        **_robust_fields((~outcomes["worst"].fooled).cpu().numpy(), y.cpu().numpy(), n_classes),
        "by_attack": {k: float((~outcomes[k].fooled).float().mean()) for k in ("pgd", "worst")},
        "evaluations_per_item": float(outcomes["worst"].evaluations.float().mean()),
        "clean_items": clean.cpu().numpy().astype(int).tolist(),
    }
    if "apgd" in outcomes:  # APGD ran on PGD's survivors
        rec["apgd_n"] = int((~outcomes["pgd"].fooled).sum())
        rec["apgd_only_broken"] = int(outcomes["apgd"].fooled.sum())
    if "square" in outcomes:
        rec.update(_square_fields(outcomes["square"], (~outcomes["gradient"].fooled).cpu().numpy()))
    return rec


def _square_fields(square: Outcome, gradient_robust: np.ndarray) -> dict[str, Any]:
    """Square's part of a record: the items it covered, how many of them the gradient attacks left standing
    (those it attacked) and how many of those it broke."""
    n = len(square.fooled)
    return {
        "square_n": int(n),
        "square_attacked": int(gradient_robust[:n].sum()),
        "square_only_broken": int(square.fooled.sum()),  # Square ran on the gradient attacks' survivors only
    }


def square_items(role: str, eps: float, train_eps: float, n: int, cfg: SuiteConfig) -> int:
    """How many of a budget's first items Square covers: ``n_square`` at the training ε, all ``n`` at a sanity
    budget (``square_sanity``; only the gradient attacks' survivors cost queries), none elsewhere."""
    if np.isclose(eps, train_eps):
        return min(cfg.n_square, n)
    return n if role == "sanity" and cfg.square_sanity else 0


def run_suite(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    train_eps: float,
    cfg: SuiteConfig,
    n_classes: int = 2,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """The whole protocol on the evaluation items ``x, y`` (already on the model's device, in the order of
    :func:`evaluation_items`): one record per budget (with the seconds it took, logged as each ends) and the
    flags."""
    clean = ~clean_outcome(model, x, y).fooled
    records = []
    budgets = cfg.budgets(train_eps)
    for i, (eps, role) in enumerate(budgets, 1):
        started = time.perf_counter()
        n = len(x) if role == "headline" else min(cfg.n_grid, len(x))
        outcomes = gradient_worst_case(model, x[:n], y[:n], eps, cfg)
        n_sq = square_items(role, eps, train_eps, n, cfg)
        if n_sq:
            standing = ~outcomes["worst"].fooled[:n_sq]
            sq = square_on_survivors(model, x[:n_sq], y[:n_sq], eps, standing, cfg)
            outcomes["square"], outcomes["gradient"] = sq, outcomes["worst"]
            outcomes["worst"] = merge(outcomes["worst"], _pad(sq, n))
        rec = _record(eps, role, y[:n], clean[:n], outcomes, n_classes)
        rec["seconds"] = time.perf_counter() - started
        records.append(rec)
        acc = rec["robust_acc"]
        log(
            f"budget {i}/{len(budgets)}: eps={rec['eps_label']} ({role}, {n} items) robust {acc['value']:.3f} "
            f"[{acc['lo']:.3f}, {acc['hi']:.3f}], {rec['evaluations_per_item']:.0f} evaluations/item, {rec['seconds']:.0f} s"
        )
    return {"clean_items": clean.cpu().numpy().astype(int).tolist(), "budgets": records, "flags": suite_flags(records, cfg)}


def _pad(out: Outcome, n: int) -> Outcome:
    """``out`` extended with un-fooled items up to ``n`` (Square ran on a prefix)."""
    extra = n - len(out.fooled)
    if extra <= 0:
        return out
    return Outcome(
        torch.cat([out.x_adv, out.x_adv.new_zeros((extra, *out.x_adv.shape[1:]))]),
        torch.cat([out.fooled, out.fooled.new_zeros(extra)]),
        torch.cat([out.evaluations, out.evaluations.new_zeros(extra)]),
    )


def suite_flags(records: Sequence[dict[str, Any]], cfg: SuiteConfig) -> list[str]:
    """Reasons not to trust a cell's robustness numbers (empty when none)."""
    flags = []
    for r in records:
        acc = r["robust_acc"]["value"]
        if r["role"] == "sanity":  # Square's breaks there are part of the worst case the sanity rule judges
            if acc > cfg.sanity_max_acc:
                flags.append(_sanity_flag(r, cfg))
        elif r.get("square_only_broken", 0) > max(1, cfg.square_tol * r.get("square_n", 0)):
            flags.append(
                f"Square broke {r['square_only_broken']} items at eps={r['eps_label']} that PGD and APGD left standing: "
                "the gradient attacks are being fooled (gradient masking); the robust accuracy includes Square's breaks"
            )
    ordered = sorted((r for r in records), key=lambda r: r["eps"])
    for small, large in zip(ordered, ordered[1:], strict=False):
        a = _shared_prefix_acc(small, large)
        b = _shared_prefix_acc(large, small)
        if b > a + cfg.monotone_tol:
            flags.append(
                f"robust accuracy rises from {a:.3f} at eps={small['eps_label']} to {b:.3f} at eps={large['eps_label']} "
                "on the same items: a larger ball contains the smaller one, so the attack is failing"
            )
    return flags


def _sanity_flag(r: dict[str, Any], cfg: SuiteConfig) -> str:
    """Why robust accuracy above ≈ 0 at a sanity budget is a flag, and what Square found there (when it ran)."""
    head = (
        f"robust accuracy {r['robust_acc']['value']:.3f} at eps={r['eps_label']} (> {cfg.sanity_max_acc:g}), a budget far "
        "beyond the training ε that a model is not expected to survive"
    )
    if "square_attacked" not in r:
        return head + ": the attacks may be failing (gradient masking or a broken evaluation)"
    k, m = r["square_only_broken"], r["square_attacked"]
    if k:
        return (
            f"{head}; Square (gradient-free) broke {k} of the {m} items PGD and APGD left standing, so the gradient "
            f"attacks are failing at this budget ({sum(r['robust_items'])} items resist every attack; the robust "
            "accuracy counts Square's breaks)"
        )
    return (
        f"{head}; Square (gradient-free) broke none of the {m} items PGD and APGD left standing: the model resists "
        "this budget on them, or every attack fails there (not the gradient masking Square exposes)"
    )


def sanity_without_square(robustness: dict[str, Any], train_eps: float, cfg: SuiteConfig) -> list[dict[str, Any]]:
    """The sanity budgets of a record that ``cfg`` would have Square attack but that have no Square result yet."""
    return [
        r for r in robustness["budgets"]
        if r["role"] == "sanity" and "square_n" not in r and square_items("sanity", r["eps"], train_eps, r["n"], cfg)
    ]  # fmt: skip


def add_sanity_square(
    robustness: dict[str, Any], model: nn.Module, x: Tensor, y: Tensor, train_eps: float, cfg: SuiteConfig, n_classes: int = 2
) -> int:
    """Run Square at the sanity budgets of a record :func:`run_suite` wrote before ``square_sanity`` existed, on
    the items its gradient attacks left standing (read from the record), and update the records and flags in
    place; returns the number of budgets updated. ``x, y``: the same evaluation items, in the same order.

    Why not rerun the cell: the rest of the record is unchanged by construction (the sanity budgets feed no
    comparison), and a sanity budget leaves few items standing, so this costs seconds, not the cell's minutes.
    A sanity flag can only go (Square broke enough of what was left) or change its reason, never appear.
    """
    done = 0
    for rec in sanity_without_square(robustness, train_eps, cfg):
        n = rec["n"]
        started = time.perf_counter()
        gradient = np.asarray(rec["robust_items"], dtype=bool)
        standing = torch.as_tensor(gradient, device=x.device)
        sq = square_on_survivors(model, x[:n], y[:n], rec["eps"], standing, cfg)
        robust = gradient & ~sq.fooled.cpu().numpy()
        rec.update(_robust_fields(robust, y[:n].cpu().numpy(), n_classes), **_square_fields(sq, gradient))
        rec["by_attack"]["worst"] = float(robust.mean())
        rec["evaluations_per_item"] += float(sq.evaluations.float().mean())
        rec["seconds"] += time.perf_counter() - started
        done += 1
    robustness["flags"] = suite_flags(robustness["budgets"], cfg)
    return done


def _shared_prefix_acc(rec: dict[str, Any], other: dict[str, Any]) -> float:
    """Robust accuracy of ``rec`` on the items it shares with ``other`` (the shorter prefix)."""
    n = min(rec["n"], other["n"])
    return float(np.mean(rec["robust_items"][:n])) if n else float("nan")
