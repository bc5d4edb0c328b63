"""Paired comparisons between regimes and the report's "what these results support" section."""

from __future__ import annotations

import numpy as np
import pytest

from robustdx.core.evaluation.findings import compare, comparisons, findings_markdown, item_scores

pytestmark = pytest.mark.unit

N = 60


def cell(recipe: str, seed: int, robust: np.ndarray, clean: np.ndarray | None = None, items: np.ndarray | None = None) -> dict:
    items = np.arange(N) if items is None else items
    clean = np.ones(N, dtype=int) if clean is None else clean
    budget = {"eps_label": "2/255", "robust_items": robust.astype(int).tolist()}
    return {"recipe": recipe, "seed": seed, "items": items.tolist(),
            "robustness": {"clean_items": clean.astype(int).tolist(), "budgets": [budget]}}  # fmt: skip


def cells() -> list[dict]:
    rng = np.random.default_rng(0)
    strong = (rng.random(N) < 0.8).astype(int)
    return [
        *(cell("ce", s, np.zeros(N, dtype=int)) for s in range(3)),
        *(cell("adv_supcon_ft", s, strong) for s in range(3)),
        *(cell("adv_ce_ft", s, strong ^ (rng.random(N) < 0.05)) for s in range(3)),  # nearly the same items
    ]


def test_item_scores_are_the_share_of_runs_that_got_each_item_right() -> None:
    scores = item_scores(cells(), "adv_supcon_ft", "2/255")
    assert set(scores) == set(range(N)) and set(scores.values()) <= {0.0, 1.0}
    assert item_scores(cells(), "ce", "clean") == dict.fromkeys(range(N), 1.0)
    two_of_three = [cell("ce", s, np.full(N, int(s < 2))) for s in range(3)]
    assert item_scores(two_of_three, "ce", "2/255") == dict.fromkeys(range(N), 2 / 3)


def test_a_clear_difference_is_supported_and_a_tiny_one_is_not() -> None:
    found = comparisons(cells(), ["ce", "adv_ce_ft", "adv_supcon_ft"], ["2/255"])
    by_pair = {(c.a, c.b): c for c in found}
    assert set(by_pair) == {("adv_ce_ft", "ce"), ("adv_supcon_ft", "ce"), ("adv_supcon_ft", "adv_ce_ft")}
    strong = by_pair[("adv_supcon_ft", "ce")]
    assert strong.supported and strong.difference > 0.6 and strong.b_better == 0
    assert strong.p_holm >= strong.p_value
    assert not by_pair[("adv_supcon_ft", "adv_ce_ft")].supported
    text = findings_markdown(found, {"ce-s0": [], "adv_ce_ft-s1": ["robust accuracy 0.2 at eps=64/255"]})
    assert text.startswith("## What these results support")
    assert "**adv_supcon_ft** has a higher robust accuracy at ε = 2/255 than **ce**" in text
    assert "No difference in robust accuracy at ε = 2/255 between adv_supcon_ft and adv_ce_ft is supported" in text
    assert "`adv_ce_ft-s1`: robust accuracy 0.2" in text and "ce-s0" not in text


def test_only_shared_items_are_compared() -> None:
    a = cell("ce", 0, np.ones(N, dtype=int), items=np.arange(N))
    b = cell("adv_supcon_ft", 0, np.ones(N, dtype=int), items=np.arange(N, 2 * N))
    assert compare([a, b], "adv_supcon_ft", "ce", "2/255") is None
    c = compare([a, cell("adv_supcon_ft", 0, np.zeros(N, dtype=int))], "adv_supcon_ft", "ce", "2/255")
    assert c is not None and c.n == N and c.b_better == N and c.p_value < 1e-10


def test_cross_validation_items_are_paired_by_fold_and_index() -> None:
    """Under k-fold cross-validation a cell's items are "f<fold>:<index>": index 3 of fold 0 and of fold 1 are
    different images, and each fold pairs its recipes on its own items."""
    ids = {f: np.array([f"f{f}:{i}" for i in range(N)]) for f in (0, 1)}
    wrong_on_fold_1 = [cell("ce", 0, np.ones(N, dtype=int), items=ids[0]), cell("ce", 0, np.zeros(N, dtype=int), items=ids[1])]
    right = [cell("adv_supcon_ft", 0, np.ones(N, dtype=int), items=ids[f]) for f in (0, 1)]
    assert item_scores(wrong_on_fold_1, "ce", "2/255") == {**dict.fromkeys(ids[0], 1.0), **dict.fromkeys(ids[1], 0.0)}
    c = compare(wrong_on_fold_1 + right, "adv_supcon_ft", "ce", "2/255")
    assert c is not None and c.n == 2 * N and (c.a_better, c.b_better) == (N, 0)
    assert (c.mean_a, c.mean_b) == (1.0, 0.5)  # each item scored once: not divided by the recipe's two cells
    half = compare(wrong_on_fold_1 + right[:1], "adv_supcon_ft", "ce", "2/255")  # a fold not finished yet
    assert half is not None and half.n == N and half.a_better == half.b_better == 0 and half.mean_b == 1.0


def test_nothing_supported_says_so() -> None:
    same = [cell("ce", 0, np.ones(N, dtype=int)), cell("adv_supcon_ft", 0, np.ones(N, dtype=int))]
    found = comparisons(same, ["ce", "adv_supcon_ft"], ["clean", "2/255"])
    assert len(found) == 2 and not any(c.supported for c in found)
    assert "No comparison between regimes passed its test" in findings_markdown(found, {})


def test_no_comparison_yet_and_unsupported_claims_are_said() -> None:
    text = findings_markdown([], {}, unsupported=["That `ce`'s IG maps show what the model learned"])
    assert "No comparison could be made: fewer than two regimes are finished." in text
    against = text.split("### What they do not support")[1]
    assert "- Any ranking of the regimes (none compared yet)." in against and "`ce`'s IG maps" in against
    assert "every comparison made was supported" not in text


def test_a_difference_that_seeds_do_not_reproduce_is_reported_apart() -> None:
    """Items 15-59 are right in two of adv_supcon_ft's three seeds and wrong in every ce seed: the test over
    items passes by far, but one seed of adv_supcon_ft is worse than ce, so the seed interval contains 0."""
    first = lambda k: (np.arange(N) < k).astype(int)  # noqa: E731 - right on the first k items
    runs = [cell("adv_supcon_ft", 0, first(N)), cell("adv_supcon_ft", 1, first(N)), cell("adv_supcon_ft", 2, first(10))]
    runs += [cell("ce", s, first(15)) for s in range(3)]
    (c,) = comparisons(runs, ["ce", "adv_supcon_ft"], ["2/255"])
    assert c.supported and (c.a_better, c.b_better) == (45, 5)
    assert c.seed_differences == pytest.approx((0.75, 0.75, 10 / 60 - 0.25))
    lo, hi = c.seed_ci
    assert lo < 0 < hi and c.across_seeds is False
    text = findings_markdown([c], {})
    main, apart = text.split("### For these trained models only, not across training seeds")
    assert "No difference between regimes is established across training seeds" in main and "**adv_supcon_ft**" not in main
    assert "**adv_supcon_ft** has a higher robust accuracy at ε = 2/255 than **ce**" in apart
    assert "Per training seed: +0.750, +0.750, -0.083; 95 % t interval of their mean [-0.723, +1.000]." in apart  # clipped


def test_a_difference_every_seed_reproduces_stays_supported_and_one_seed_measures_nothing() -> None:
    first = lambda k: (np.arange(N) < k).astype(int)  # noqa: E731
    runs = [cell("adv_supcon_ft", s, first(50 + s)) for s in range(3)] + [cell("ce", s, first(10 + 2 * s)) for s in range(3)]
    (c,) = comparisons(runs, ["ce", "adv_supcon_ft"], ["2/255"])
    assert c.supported and c.across_seeds is True and c.seed_ci[0] > 0
    text = findings_markdown([c], {})
    assert "For these trained models only" not in text and "Per training seed: +0.667, +0.650, +0.633" in text
    (one,) = comparisons([runs[0], runs[3]], ["ce", "adv_supcon_ft"], ["2/255"])
    assert one.seed_differences == pytest.approx((40 / 60,)) and one.seed_ci is None and one.across_seeds is None
    assert "Per training seed" not in findings_markdown([one], {})


def test_seed_differences_read_from_the_better_side_and_pair_each_seed_on_its_own_items() -> None:
    first = lambda k: (np.arange(N) < k).astype(int)  # noqa: E731
    runs = [cell("adv_supcon_ft", s, first(10 + s)) for s in range(3)] + [cell("ce", s, first(50)) for s in range(3)]
    (c,) = comparisons(runs, ["ce", "adv_supcon_ft"], ["2/255"])  # a = adv_supcon_ft is the worse one
    assert c.supported and c.difference < 0 and c.across_seeds is True and c.seed_ci[1] < 0
    assert "**ce** has a higher robust accuracy" in c.sentence() and "Per training seed: +0.667, +0.650, +0.633" in c.sentence()
    # cross-validation: ce has finished only fold 0 of seed 1, so seed 1 compares fold 0 (where adv_supcon_ft is
    # right everywhere), not adv_supcon_ft's two folds (wrong everywhere on fold 1) against ce's one
    ids = {f: np.array([f"f{f}:{i}" for i in range(N)]) for f in (0, 1)}
    right = lambda r, s, f: int(r == "adv_supcon_ft" and (s, f) != (1, 1))  # noqa: E731
    cv = [cell(r, s, np.full(N, right(r, s, f)), items=ids[f]) for r in ("ce", "adv_supcon_ft") for s in (0, 1)
          for f in (0, 1) if not (r == "ce" and s == 1 and f == 1)]  # fmt: skip
    (d,) = comparisons(cv, ["ce", "adv_supcon_ft"], ["2/255"])
    assert d.seed_differences == (1.0, 1.0)
