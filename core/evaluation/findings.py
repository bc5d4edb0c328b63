"""What a paper table supports: paired comparisons between regimes on the same items, corrected for
multiplicity, and the sentences a report may state.

Why generated, not written: a reader should find in the report's first section only what passed a test,
with its size and interval, and an explicit "not supported" for the rest — the paper's tables carried
conclusions that single runs on subsamples could not. A comparison pairs two regimes item by item on the
evaluation items both were scored on: each item's score is the number of seeds (or, with cross-validation, the
single fold) in which the regime got it right, and the exact sign test asks whether one regime wins more
items than the other (with one seed it is the exact McNemar test). Every p-value of the report's family is
Holm-corrected together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustdx.core.evaluation.statistics import exact_sign_test, holm

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

    def sentence(self) -> str:
        what = "clean accuracy" if self.metric == "clean" else f"robust accuracy at ε = {self.metric}"
        lo, hi = self.ci
        if self.supported:
            better, worse = (self.a, self.b) if self.difference > 0 else (self.b, self.a)
            lo, hi = (lo, hi) if self.difference > 0 else (-hi, -lo)
            return (
                f"**{better}** has a higher {what} than **{worse}**: {max(self.mean_a, self.mean_b):.3f} vs "
                f"{min(self.mean_a, self.mean_b):.3f} (difference {abs(self.difference):.3f}, 95 % CI [{lo:.3f}, {hi:.3f}]; "
                f"{self.a_better + self.b_better} discordant items of {self.n}; Holm-adjusted p = {self.p_holm:.2g})."
            )
        return (
            f"No difference in {what} between {self.a} and {self.b} is supported ({self.mean_a:.3f} vs {self.mean_b:.3f}, "
            f"difference {self.difference:+.3f}, 95 % CI [{lo:+.3f}, {hi:+.3f}]; Holm-adjusted p = {self.p_holm:.2g})."
        )


def item_scores(cells: Sequence[dict[str, Any]], recipe: str, key: str) -> dict[int | str, float]:
    """Per evaluation item, the share of ``recipe``'s cells scoring it that got it right: ``key`` is ``"clean"``
    or a budget label. Seeds score the same items, so an item's share is over the seeds; under cross-validation
    each fold scores its own items, so the share is over the cells of that item's fold, not over every cell
    of the recipe. Items are keyed by the id the cell recorded: the test-split index (an int) for a fixed
    split, ``"f<fold>:<index>"`` under cross-validation, where indices repeat across folds."""
    right: dict[int | str, float] = {}
    runs: dict[int | str, int] = {}
    for cell in (c for c in cells if c["recipe"] == recipe):
        if key == "clean":
            outcomes = cell["robustness"]["clean_items"]
        else:
            rec = next((b for b in cell["robustness"]["budgets"] if b["eps_label"] == key), None)
            if rec is None:
                continue
            outcomes = rec["robust_items"]
        for item, ok in zip(cell["items"], outcomes, strict=False):
            right[item] = right.get(item, 0.0) + float(ok)
            runs[item] = runs.get(item, 0) + 1
    return {item: right[item] / runs[item] for item in right}


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
        t["b_better"], t["p_value"],
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
    supported = [c for c in found if c.supported]
    if not found:
        lines.append("- No comparison could be made: fewer than two regimes are finished.")
    elif supported:
        lines += [f"- {c.sentence()}" for c in supported]
    else:
        lines.append("- No comparison between regimes passed its test (exact sign test, Holm-corrected, α = 0.05).")
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
