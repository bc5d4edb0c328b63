"""The README's figures are rendered from committed artifacts, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.unit


def _figures():
    spec = importlib.util.spec_from_file_location("figures", REPO / "docs" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_match_their_artifacts() -> None:
    figures = _figures()
    assert figures.main(["--check"]) == 0, "run `python docs/figures.py` after changing a result or docs/timings.json"


def test_no_measurement_is_typed_outside_a_figure_block() -> None:
    text = _figures().BLOCK.sub("", (REPO / "README.md").read_text())
    typed = re.findall(r"[^.\n]*\bmeasured\b[^.\n]*\d[^.\n]*", text, flags=re.I)
    assert not typed, f"measured figures outside <!-- figure:... --> blocks: {typed}"


def test_every_benchmark_result_is_rendered_with_its_commit(tmp_path: Path) -> None:
    figures = _figures()
    text = figures.benchmarks()
    for path in (REPO / "benchmarks" / "results").glob("*.json"):
        assert f"`benchmarks/results/{path.name}`" in text
    figures.TIMINGS = tmp_path / "timings.json"
    assert "Not measured yet" in figures.timings()
    figures.TIMINGS.write_text(
        json.dumps(
            {
                "commit": "0123456789abcdef0123456789abcdef01234567",
                "date": "2026-11-30T12:00:00+00:00",
                "seconds": {"venv": 150.0, "demo": 170.0, "test": 1230.0},
                "tests": {"collected": 700, "passed": 698, "failed": 0, "skipped": 2, "deselected": 2},
                "machine": {"cpu_count": 2, "loadavg_before": [0.5, 0.4, 0.3], "loadavg_after": [1.9, 1.8, 1.5]},
            }
        )
    )
    line = figures.timings()
    assert "commit `0123456789`" in line and "`make test` 20.5 min (698 passed, 2 skipped" in line


def test_a_ratio_over_its_goal_is_met_even_when_another_goal_is_missed() -> None:
    figures = _figures()
    h = {"ratio": 3.24, "goal": ">= 3x", "met": False, "requires_rss_slope_lt_1mb": False}
    assert figures._ratio_met(h) and not figures._ratio_met({**h, "ratio": 2.9})
    assert figures._extras(h) == "; rss slope lt 1mb: **missed**"
    assert not figures._ratio_met({"ratio": 5.0, "goal": "same best score (ratio 1.00)", "met": False})


def test_an_unknown_figure_block_is_an_error() -> None:
    with pytest.raises(KeyError, match="no renderer"):
        _figures().render("<!-- figure:nonsense -->x<!-- /figure -->")


def test_benchmark_details_compute_what_a_missed_goal_would_need() -> None:
    figures = _figures()
    train = {
        "gflop_per_step": {"authors": 800.0, "robustdx": 600.0},
        "fraction_of_matmul_peak": {"authors": 0.5, "robustdx": 0.6},
        "matmul_peak_gflop_per_s": 400.0,
        "headline": {"goal": ">= 2x"},
    }
    # time ∝ GFLOP / fraction: 2x needs 2 * 0.5 * 600 / 800 = 75 % of peak
    assert "2x would need 75% of peak" in figures._why_train(train)
    rss = [[i * 1000, mb] for i, mb in enumerate([100.0, 110.0, 130.0, 130.4, 130.2, 130.5])]
    serve = {"bare_model_images_per_s": {"median": 400.0}, "memory": {"rss_mb_every_1000": rss}}
    assert "130 MB after 5,000 requests, within 1 MB of that from 2,000 on" in figures._why_serve(serve)
    text = figures.benchmark_details()
    for path in (REPO / "benchmarks" / "results").glob("*.json"):
        if path.stem in figures.WHY:
            assert f"- `{path.stem}` (commit `" in text
