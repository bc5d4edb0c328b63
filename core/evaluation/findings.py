"""What a paper table supports: paired comparisons between regimes on the same items, corrected for
multiplicity, and the sentences a report may state.

Why generated, not written: a reader should find in the report's first section only what passed a test,
with its size and interval, and an explicit "not supported" for the rest — the paper's tables carried
conclusions that single runs on subsamples could not. A comparison pairs two regimes item by item on the
evaluation items both were scored on: each item's score is the number of seeds (or, with cross-validation, the
single fold) in which the regime got it right, and the exact sign test asks whether one regime wins more
items than the other (with one seed it is the exact McNemar test). Every p-value of the report's family is
Holm-corrected together.

That test is conditional on the trained models: it says these models differ on these items. Whether the
regimes differ is a question about training seeds, so where both regimes have two or more seeds in common the
comparison also carries the t interval of the per-seed differences (matched by seed, each on the items both
scored), and a claim whose interval contains 0 is reported apart, as holding for these models but not across
seeds. The interval is uncorrected and serves only to demote: with a handful of seeds it cannot establish a
claim on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustdx.core.evaluation.statistics import exact_sign_test, holm, t_interval

REFERENCE = "ce"
PROPOSED = "adv_supcon_ft"


@dataclass(frozen=True)
class Comparison:
    """One paired test: ``a`` against ``b`` on ``metric`` (``clean`` or a budget label)."""

    metric: str
    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    difference: float
    ci: tuple[float, float]
    a_better: int
    b_better: int
    p_value: float
    p_holm: float = float("nan")
    supported: bool = False
    seed_differences: tuple[float, ...] = ()  # a - b per training seed both regimes have, on the same items

    @property
    def seed_ci(self) -> tuple[float, float] | None:
        """The t interval of the mean per-seed difference (None with fewer than two matched seeds)."""
        return t_interval(self.seed_differences) if len(self.seed_differences) >= 2 else None

    @property
    def across_seeds(self) -> bool | None:
        """Whether the difference holds across training seeds: the seed interval excludes 0 on the side of the
        item-level difference (None: fewer than two matched seeds, so not measured)."""
        ci = self.seed_ci
        if ci is None:
            return None
        return ci[0] > 0 if self.difference > 0 else ci[1] < 0

    def sentence(self) -> str:
        what = "clean accuracy" if self.metric == "clean" else f"robust accuracy at ε = {self.metric}"
        lo, hi = self.ci
        if self.supported:
            sign = 1 if self.difference > 0 else -1
            better, worse = (self.a, self.b) if sign > 0 else (self.b, self.a)
            lo, hi = (lo, hi) if sign > 0 else (-hi, -lo)
            return (
                f"**{better}** has a higher {what} than **{worse}**: {max(self.mean_a, self.mean_b):.3f} vs "
                f"{min(self.mean_a, self.mean_b):.3f} (difference {abs(self.difference):.3f}, 95 % CI [{lo:.3f}, {hi:.3f}]; "
                f"{self.a_better + self.b_better} discordant items of {self.n}; Holm-adjusted p = {self.p_holm:.2g})."
                + self._seeds(sign)
            )
        return (
            f"No difference in {what} between {self.a} and {self.b} is supported ({self.mean_a:.3f} vs {self.mean_b:.3f}, "
            f"difference {self.difference:+.3f}, 95 % CI [{lo:+.3f}, {hi:+.3f}]; Holm-adjusted p = {self.p_holm:.2g})."
            + self._seeds(1)
        )

    def _seeds(self, sign: int) -> str:
        ci = self.seed_ci
        if ci is None:
            return ""
        lo, hi = sorted((max(-1.0, min(1.0, sign * ci[0])), max(-1.0, min(1.0, sign * ci[1]))))  # a difference of accuracies
        each = ", ".join(f"{sign * d:+.3f}" for d in self.seed_differences)
        return f" Per training seed: {each}; 95 % t interval of their mean [{lo:+.3f}, {hi:+.3f}]."


def item_scores(cells: Sequence[dict[str, Any]], recipe: str, key: str) -> dict[int | str, float]:
    """Per evaluation item, the share of ``recipe``'s cells scoring it that got it right: ``key`` is ``"clean"``
    or a budget label. Seeds score the same items, so an item's share is over the seeds; under cross-validation
    each fold scores its own items, so the share is over the cells of that item's fold, not over every cell
    of the recipe. Items are keyed by the id the cell recorded: the test-split index (an int) for a fixed
    split, ``"f<fold>:<index>"`` under cross-validation, where indices repeat across folds."""
    right: dict[int | str, float] = {}
    runs: dict[int | str, int] = {}
    for cell in (c for c in cells if c["recipe"] == recipe):
        for item, ok in _outcomes(cell, key):
            right[item] = right.get(item, 0.0) + float(ok)
            runs[item] = runs.get(item, 0) + 1
    return {item: right[item] / runs[item] for item in right}


def seed_outcomes(cells: Sequence[dict[str, Any]], recipe: str, key: str) -> dict[int, dict[int | str, float]]:
    """Per training seed, ``recipe``'s verdict on each item it scored (``key`` as in :func:`item_scores`), its
    folds pooled."""
    out: dict[int, dict[int | str, float]] = {}
    for cell in (c for c in cells if c["recipe"] == recipe):
        out.setdefault(cell["seed"], {}).update((item, float(ok)) for item, ok in _outcomes(cell, key))
    return out


def seed_differences(cells: Sequence[dict[str, Any]], a: str, b: str, key: str) -> tuple[float, ...]:
    """``a``'s accuracy minus ``b``'s for each training seed both have, each on the items both scored in that
    seed (a seed whose folds are not all finished compares the folds both have)."""
    sa, sb = seed_outcomes(cells, a, key), seed_outcomes(cells, b, key)
    diffs = []
    for seed in sorted(set(sa) & set(sb)):
        items = sorted(set(sa[seed]) & set(sb[seed]), key=str)
        if items:
            diffs.append(float(np.mean([sa[seed][i] - sb[seed][i] for i in items])))
    return tuple(diffs)


def _outcomes(cell: dict[str, Any], key: str) -> list[tuple[int | str, Any]]:
    """``(item id, right or not)`` of one cell for ``key`` (nothing when the cell has no such budget)."""
    if key == "clean":
        outcomes = cell["robustness"]["clean_items"]
    else:
        rec = next((b for b in cell["robustness"]["budgets"] if b["eps_label"] == key), None)
        if rec is None:
            return []
        outcomes = rec["robust_items"]
    return list(zip(cell["items"], outcomes, strict=False))


def compare(cells: Sequence[dict[str, Any]], a: str, b: str, key: str, seed: int = 0) -> Comparison | None:
    """The paired test of ``a`` against ``b`` on the items both were scored on (None when they share none)."""
    sa, sb = item_scores(cells, a, key), item_scores(cells, b, key)
    shared = sorted(set(sa) & set(sb))
    if not shared:
        return None
    xa = np.array([sa[i] for i in shared])  # per item: the share of runs that got it right
    xb = np.array([sb[i] for i in shared])
    t = exact_sign_test(xa, xb, seed=seed)
    return Comparison(
        key, a, b, len(shared), t["mean_a"], t["mean_b"], t["difference"], tuple(t["difference_ci"]), t["a_better"],
        t["b_better"], t["p_value"], seed_differences=seed_differences(cells, a, b, key),
    )  # fmt: skip


def comparisons(
    cells: Sequence[dict[str, Any]], recipes: Sequence[str], keys: Sequence[str], alpha: float = 0.05
) -> list[Comparison]:
    """Every regime against ``ce`` and ``adv_supcon_ft`` against every other regime, on each of ``keys``,
    Holm-corrected as one family."""
    pairs = [(r, REFERENCE) for r in recipes if r != REFERENCE and REFERENCE in recipes]
    if PROPOSED in recipes:
        pairs += [(PROPOSED, r) for r in recipes if r not in (PROPOSED, REFERENCE)]
    found = [c for key in keys for a, b in pairs if (c := compare(cells, a, b, key)) is not None]
    adjusted, rejected = holm([c.p_value for c in found], alpha)
    return [Comparison(**{**c.__dict__, "p_holm": p, "supported": r}) for c, p, r in zip(found, adjusted, rejected, strict=True)]


def findings_markdown(
    found: Sequence[Comparison], flags: dict[str, list[str]], notes: Sequence[str] = (), unsupported: Sequence[str] = ()
) -> str:
    """The report's opening section: what passed its test, what did not (the comparisons that failed and the
    ``unsupported`` claims the data speak against, e.g. attributions failing their checks), which cells are
    flagged, and ``notes``."""
    lines = ["## What these results support", ""]
    supported = [c for c in found if c.supported and c.across_seeds is not False]
    models_only = [c for c in found if c.supported and c.across_seeds is False]
    if any(c.seed_ci is not None for c in found) and (supported or models_only):
        lines += [
            "Each claim passed an exact paired test over the evaluation items (Holm-corrected, α = 0.05); where the "
            "two regimes have two or more training seeds in common, it also gives the per-seed differences and the "
            "95 % t interval of their mean (not corrected for multiplicity: it can only move a claim to the list of "
            "those that do not hold across seeds, never establish one).",
            "",
        ]
    if not found:
        lines.append("- No comparison could be made: fewer than two regimes are finished.")
    elif supported:
        lines += [f"- {c.sentence()}" for c in supported]
    elif models_only:
        lines.append(
            "- No difference between regimes is established across training seeds (those that hold for these trained "
            "models follow)."
        )
    else:
        lines.append("- No comparison between regimes passed its test (exact sign test, Holm-corrected, α = 0.05).")
    if models_only:
        lines += [
            "",
            "### For these trained models only, not across training seeds",
            "",
            "These passed the test over items, but the t interval of their per-seed differences contains 0: the "
            "trained models differ on these items, and another training seed may not reproduce it.",
            "",
            *[f"- {c.sentence()}" for c in models_only],
        ]
    lines += ["", "### What they do not support", ""]
    against = [f"- {c.sentence()}" for c in found if not c.supported] + [f"- {u}" for u in unsupported]
    if not found:
        against.insert(0, "- Any ranking of the regimes (none compared yet).")
    lines += against or ["- (every comparison made was supported, and no check spoke against a claim)"]
    flagged = {cell: f for cell, f in flags.items() if f}
    if flagged:
        lines += ["", "### Cells whose numbers are not to be trusted", ""]
        lines += [f"- `{cell}`: " + "; ".join(f) for cell, f in sorted(flagged.items())]
    if notes:
        lines += ["", "### Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
