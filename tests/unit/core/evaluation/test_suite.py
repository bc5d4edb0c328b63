"""The robustness protocol: fixed nested items, the worst case over attacks, sanity points and flags —
on models whose robust accuracy is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustdx.core.evaluation.suite import SuiteConfig, add_sanity_square, evaluation_items, run_suite
from tests.support.classifiers import EPS as UNIT
from tests.support.classifiers import MeanIntensity, margin_images, mean_intensity_batch

pytestmark = pytest.mark.unit

EPS = 0.02
FAST = {"pgd_steps": 10, "pgd_restarts": 1, "apgd_steps": 10, "n_grid": 48, "n_square": 32, "square_queries": 300}


def test_items_are_one_seeded_permutation_with_nested_prefixes() -> None:
    a, b = evaluation_items(100, None, 0), evaluation_items(100, 40, 0)
    assert sorted(a.tolist()) == list(range(100))
    assert b.tolist() == a[:40].tolist()
    assert evaluation_items(100, None, 1).tolist() != a.tolist()
    assert evaluation_items(10, 50, 0).shape == (10,)


def test_budgets_headline_first_then_grid_then_sanity_each_once() -> None:
    cfg = SuiteConfig(grid_eps=(1 / 255, 2 / 255, 4 / 255))
    budgets = cfg.budgets(2 / 255)
    assert budgets[:2] == [(2 / 255, "headline"), (4 / 255, "headline")]
    assert [r for _, r in budgets] == ["headline", "headline", "grid", "sanity", "sanity"]
    assert SuiteConfig(headline_eps=(8 / 255,)).budgets(2 / 255)[0] == (8 / 255, "headline")


def test_known_robust_accuracy_with_intervals_and_no_flags() -> None:
    model, (x, y, means) = MeanIntensity(), mean_intensity_batch(96, seed=5)
    cfg = SuiteConfig(headline_eps=(EPS,), grid_eps=(), sanity_eps=(64 / 255,), **FAST)
    lines: list[str] = []
    out = run_suite(model, x, y, EPS, cfg, log=lines.append)
    head, sanity = out["budgets"]
    want = ((means - 0.5).abs() > EPS).numpy()
    # APGD ran only on what PGD left standing, and (PGD being exact here) broke none of it
    assert head["apgd_n"] == round(head["by_attack"]["pgd"] * len(x)) and head["apgd_only_broken"] == 0
    assert len(lines) == 2 and lines[0].startswith("budget 1/2: eps=") and "robust" in lines[0]
    assert all(r["seconds"] > 0 for r in out["budgets"])
    assert head["robust_items"] == want.astype(int).tolist()
    acc = head["robust_acc"]
    assert acc["value"] == pytest.approx(want.mean()) and acc["lo"] <= acc["value"] <= acc["hi"]
    labels = y.numpy()
    for c in (0, 1):
        assert head["robust_recall"][c]["value"] == pytest.approx(want[labels == c].mean())
    assert sanity["robust_acc"]["value"] == 0.0 and sanity["n"] == 48
    assert head["square_only_broken"] == 0 and head["square_n"] == 32
    assert out["flags"] == []


def test_masked_gradients_are_caught_by_square_which_also_finishes_the_sanity_point() -> None:
    model, (x, y, _means) = MeanIntensity(quantise=True), mean_intensity_batch(96, seed=6)  # zero gradients
    cfg = SuiteConfig(headline_eps=(EPS,), grid_eps=(), sanity_eps=(64 / 255,), **FAST)
    out = run_suite(model, x, y, EPS, cfg)
    head = out["budgets"][0]
    assert head["by_attack"]["pgd"] >= float(np.mean(out["clean_items"])) - 0.05  # only its random start can break one
    assert head["square_only_broken"] > 0
    assert head["apgd_only_broken"] == 0 and head["apgd_n"] > 0  # APGD is blinded by the same zero gradients
    assert head["robust_acc"]["value"] < head["by_attack"]["pgd"]  # the headline counts Square's breaks
    assert any("Square broke" in f and "eps=" + head["eps_label"] in f for f in out["flags"])
    sanity = out["budgets"][1]  # Square on what the blinded gradient attacks left at 64/255: it breaks them all
    assert sanity["square_attacked"] > 0 and sanity["square_only_broken"] == sanity["square_attacked"]
    assert sanity["robust_acc"]["value"] == 0.0 < sanity["by_attack"]["pgd"]
    assert not any("eps=64/255" in f for f in out["flags"])  # the worst case passes the sanity rule


def test_a_sanity_flag_without_square_says_the_attacks_may_be_failing() -> None:
    model, (x, y, _means) = MeanIntensity(quantise=True), mean_intensity_batch(96, seed=6)
    cfg = SuiteConfig(headline_eps=(EPS,), grid_eps=(), sanity_eps=(64 / 255,), square_sanity=False, **FAST)
    out = run_suite(model, x, y, EPS, cfg)
    assert "square_n" not in out["budgets"][1]
    assert any("at eps=64/255" in f and "the attacks may be failing" in f for f in out["flags"])


def test_a_model_that_resists_the_sanity_budget_is_flagged_with_no_attack_breaking_it() -> None:
    x, y = margin_images([-3.0, -2.5, 2.5, 3.0] * 4 + [-0.5, 0.5] * 4)  # 16 items 20/255 or more from the boundary
    cfg = SuiteConfig(headline_eps=(EPS,), grid_eps=(), sanity_eps=(16 / 255,), **FAST)
    out = run_suite(MeanIntensity(), x, y, EPS, cfg)
    sanity = out["budgets"][1]
    assert 2.5 * UNIT > 16 / 255 and sanity["robust_acc"]["value"] == pytest.approx(16 / 24)
    assert sanity["square_attacked"] == 16 and sanity["square_only_broken"] == 0
    (flag,) = out["flags"]
    assert "at eps=16/255" in flag and "broke none of the 16 items" in flag and "the model resists this budget" in flag

    # the same items with masked gradients: PGD and APGD leave all 24 standing, Square breaks the 8 it can
    out = run_suite(MeanIntensity(quantise=True), x, y, EPS, cfg)
    sanity = out["budgets"][1]
    assert sanity["square_attacked"] == 24 and sanity["square_only_broken"] == 8
    assert sanity["robust_acc"]["value"] == pytest.approx(16 / 24)
    assert any(
        "at eps=16/255" in f and "broke 8 of the 24 items" in f and "gradient attacks are failing" in f for f in out["flags"]
    )


def test_square_added_to_an_older_record_gives_what_a_run_with_it_gives() -> None:
    model, (x, y, _means) = MeanIntensity(quantise=True), mean_intensity_batch(96, seed=6)
    base = {"headline_eps": (EPS,), "grid_eps": (), "sanity_eps": (64 / 255,), **FAST}
    old = run_suite(model, x, y, EPS, SuiteConfig(**base, square_sanity=False))
    now = run_suite(model, x, y, EPS, SuiteConfig(**base))
    assert add_sanity_square(old, model, x, y, EPS, SuiteConfig(**base)) == 1
    keys = ("robust_items", "robust_acc", "robust_recall", "robust_balanced_acc", "square_n", "square_attacked",
            "square_only_broken", "by_attack")  # fmt: skip
    assert {k: old["budgets"][1][k] for k in keys} == {k: now["budgets"][1][k] for k in keys}
    assert old["budgets"][1]["evaluations_per_item"] == pytest.approx(now["budgets"][1]["evaluations_per_item"])
    assert old["flags"] == now["flags"]
    assert add_sanity_square(old, model, x, y, EPS, SuiteConfig(**base)) == 0  # nothing left to add


def test_accuracy_rising_with_eps_is_flagged() -> None:
    from robustdx.core.evaluation.suite import suite_flags

    def rec(eps: float, items: list[int]) -> dict:
        return {"eps": eps, "eps_label": f"{eps * 255:g}/255", "role": "grid", "n": len(items), "robust_items": items,
                "robust_acc": {"value": float(np.mean(items))}}  # fmt: skip

    cfg = SuiteConfig()
    assert suite_flags([rec(2 / 255, [1, 0, 0, 0]), rec(4 / 255, [1, 0, 0, 0])], cfg) == []
    flags = suite_flags([rec(2 / 255, [1, 0, 0, 0]), rec(4 / 255, [1, 1, 1, 0])], cfg)
    assert len(flags) == 1 and "rises" in flags[0]


def test_models_are_left_as_they_were() -> None:
    model, (x, y, _m) = MeanIntensity(), mean_intensity_batch(16)
    model.train()
    run_suite(model, x, y, EPS, SuiteConfig(headline_eps=(EPS,), grid_eps=(), sanity_eps=(), **FAST))
    assert model.training and torch.is_grad_enabled()
